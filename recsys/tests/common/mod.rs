//! What the server tests share.

use recsys::data::{Dataset, Item, ItemMeta};
use recsys::model::{Checkpoint, SasRec, SasRecConfig, EXACT};

/// A small untrained model over 20 films and 3 users; the routes do not care about quality.
pub fn checkpoint() -> Checkpoint {
    let n_items = 20;
    let dataset = Dataset {
        name: "films".into(),
        items: (0..n_items)
            .map(|i| Item {
                raw_id: (100 + i).to_string(),
                meta: ItemMeta {
                    title: format!("Film {i}"),
                    year: Some(1990 + i as i32),
                    genres: vec!["Drama".into()],
                },
            })
            .collect(),
        users: vec!["alice".into(), "bob".into(), "7".into()],
        histories: vec![vec![0, 1, 2, 3], vec![4, 5], vec![6]],
    };
    let config = SasRecConfig {
        n_items,
        max_len: 8,
        d_model: 16,
        n_blocks: 1,
        n_heads: 2,
        d_ff: 32,
        dropout: 0.0,
    };
    Checkpoint {
        model: SasRec::new(config, EXACT, 9).unwrap(),
        dataset,
        report: None,
        kernel_source: None,
    }
}
