//! Real-asset test: semantic IDs for every MovieLens-100K item from SmolLM2-135M's hidden
//! states. The embeddings are cached under the build's temporary directory, so only the
//! first run pays for the language model.

use std::collections::HashSet;

use kernels::assets::{MOVIELENS_100K, SMOLLM2};
use recsys::data::{Dataset, LoadOptions};
use recsys::semantic::{embed, ItemEmbeddings, RqConfig, SemanticIds, Trie};

#[test]
fn every_ml100k_item_gets_a_unique_semantic_id() {
    let dir = MOVIELENS_100K.require().unwrap_or_else(|e| panic!("{e}"));
    let model_path = SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let dataset = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.items.len(), 1682);

    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("semantic-ml100k");
    let (embeddings, _) =
        ItemEmbeddings::cached_or_compute(&model_path, &dataset.items, &cache, |_| {}).unwrap();
    assert_eq!((embeddings.len(), embeddings.dim), (1682, 576));
    // A rerun reads the cache, bit for bit.
    let (again, cached) =
        ItemEmbeddings::cached_or_compute(&model_path, &dataset.items, &cache, |_| {}).unwrap();
    assert!(cached);
    assert_eq!(again, embeddings);

    // The cached vectors are the model's: one item recomputed matches its row.
    let model = kernels::Model::load(&model_path).unwrap();
    let item = 49;
    let fresh =
        embed::mean_hidden_state(&model, &embed::item_text(&dataset.items[item].meta)).unwrap();
    let row = &embeddings.vectors[item * 576..(item + 1) * 576];
    let diff = fresh
        .iter()
        .zip(row)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-4,
        "item {item} differs from its cached vector by {diff}"
    );

    let raw_ids: Vec<String> = dataset.items.iter().map(|i| i.raw_id.clone()).collect();
    let ids = SemanticIds::build(
        &embeddings.vectors,
        embeddings.dim,
        &raw_ids,
        embeddings.key.clone(),
        &RqConfig::default(),
    )
    .unwrap();
    assert_eq!(ids.items.len(), 1682);
    let unique: HashSet<&[u16]> = ids.items.iter().map(|i| i.codes.as_slice()).collect();
    assert_eq!(unique.len(), 1682, "two items share a semantic ID");
    let codes = ids.codes_for(&dataset).unwrap();
    assert_eq!(Trie::new(&codes).unwrap().len(), 1682);
    for (level, report) in ids.levels.iter().enumerate() {
        assert!(report.converged, "level {level} did not converge");
        assert!(
            report.codes_used * 2 > report.codebook_size,
            "level {level} uses only {} of {} codes",
            report.codes_used,
            report.codebook_size
        );
    }
    assert!(ids.levels[2].residual_share < ids.levels[0].residual_share);
}

#[test]
fn a_cache_that_the_model_no_longer_computes_is_recomputed() {
    let dir = MOVIELENS_100K.require().unwrap_or_else(|e| panic!("{e}"));
    let model_path = SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let dataset = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    let items = &dataset.items[..5];
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("semantic-stale-{}", std::process::id()));
    let (fresh, cached) =
        ItemEmbeddings::cached_or_compute(&model_path, items, &cache, |_| {}).unwrap();
    assert!(!cached);

    // As if an earlier build's kernels had rounded the first item differently.
    let mut stale = fresh.clone();
    stale.vectors[0] += 0.01;
    stale.save(&fresh.key.cache_path(&cache)).unwrap();
    let (again, cached) =
        ItemEmbeddings::cached_or_compute(&model_path, items, &cache, |_| {}).unwrap();
    assert!(!cached, "a stale cache was read as is");
    assert_eq!(again, fresh);
    let (_, cached) =
        ItemEmbeddings::cached_or_compute(&model_path, items, &cache, |_| {}).unwrap();
    assert!(cached, "the recomputed cache was not written back");
    std::fs::remove_dir_all(&cache).unwrap();
}
