-- Each mutator has one name (`agent::mutate::Mutator`), in configs, statistics and programs
-- alike: the library swap was `subtree_swap` in statistics, and the rule edit was stored on
-- its programs as `layer_rule` or `head_rule`.
UPDATE programs SET mutator = 'rule_edit' WHERE mutator IN ('layer_rule', 'head_rule');
UPDATE programs SET mutator = 'library_swap' WHERE mutator = 'subtree_swap';
UPDATE mutator_stats SET mutator = 'library_swap' WHERE mutator = 'subtree_swap';
