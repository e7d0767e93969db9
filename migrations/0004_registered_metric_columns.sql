-- Indexed metric columns follow the metric registry (`evaluator::metric`). No task reports
-- `speedup` or `kl_vs_exact`: the drop-in task's measured speed-up is `attention_speedup`
-- and its fidelity `kl_max_mean`, which keep their columns. The values stay in metrics_json.
DROP INDEX evaluations_kl_vs_exact;
DROP INDEX evaluations_speedup;
ALTER TABLE evaluations DROP COLUMN kl_vs_exact;
ALTER TABLE evaluations DROP COLUMN speedup;
