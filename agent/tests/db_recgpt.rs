//! The RecGPT enrichment cache: every query on a scratch database, rows kept apart by what
//! produced them, and refusals of what cannot be stored or read back.

mod db_common;

use agent::db::{Db, EnrichmentCounts, EnrichmentKey, Error, Explanation, ItemTags, UserProfile};
use db_common::ScratchDir;
use sqlx::Connection;

fn key(dataset: &str, model: &str, prompt_version: i64) -> EnrichmentKey {
    EnrichmentKey {
        dataset: dataset.into(),
        model: model.into(),
        prompt_version,
    }
}

fn profile(user: &str, tags: &[&str], problem: Option<&str>) -> UserProfile {
    UserProfile {
        user_id: user.into(),
        profile: format!("{user} likes quiet dramas."),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        reply: format!(
            "PROFILE: {user} likes quiet dramas.\nTAGS: {}",
            tags.join(", ")
        ),
        problem: problem.map(str::to_string),
        seconds: 1.25,
    }
}

fn item(id: &str, tags: &[&str]) -> ItemTags {
    ItemTags {
        item_id: id.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        reply: format!("TAGS: {}", tags.join(", ")),
        problem: tags
            .is_empty()
            .then(|| "no usable tags in the reply".into()),
        seconds: 0.5,
    }
}

fn explanation(user: &str, item: &str, sentence: &str) -> Explanation {
    Explanation {
        user_id: user.into(),
        item_id: item.into(),
        sentence: sentence.into(),
        reply: sentence.into(),
        problem: sentence
            .is_empty()
            .then(|| "no sentence of three or more words in the reply".into()),
        seconds: 0.75,
    }
}

#[tokio::test]
async fn profiles_round_trip_in_order_and_the_first_row_stays() {
    let dir = ScratchDir::new("recgpt-profiles");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("ml-100k@0123", "smollm2.gguf", 1);
    let first = profile("196", &["drama", "romance"], None);
    assert!(db.insert_profile(&k, &first).await.unwrap());
    assert!(db
        .insert_profile(&k, &profile("7", &[], Some("no usable tags in the reply")))
        .await
        .unwrap());
    let mut again = profile("196", &["action"], None);
    again.profile = "changed".into();
    assert!(
        !db.insert_profile(&k, &again).await.unwrap(),
        "a second profile for the same user and key is not stored"
    );
    let stored = db.profiles(&k).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0], first);
    assert_eq!(stored[1].user_id, "7");
    assert!(stored[1].tags.is_empty());
    assert_eq!(
        stored[1].problem.as_deref(),
        Some("no usable tags in the reply")
    );
}

#[tokio::test]
async fn item_tags_and_explanations_round_trip() {
    let dir = ScratchDir::new("recgpt-items");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("ml-100k@0123", "smollm2.gguf", 1);
    let toy = item("1", &["animation", "family", "buddy comedy"]);
    assert!(db.insert_item_tags(&k, &toy).await.unwrap());
    assert!(db.insert_item_tags(&k, &item("2", &[])).await.unwrap());
    assert!(!db
        .insert_item_tags(&k, &item("1", &["other"]))
        .await
        .unwrap());
    let tags = db.item_tags(&k).await.unwrap();
    assert_eq!(tags, vec![toy, item("2", &[])]);

    let said = explanation("196", "1", "You enjoy warm animated comedies.");
    assert!(db.insert_explanation(&k, &said).await.unwrap());
    assert!(db
        .insert_explanation(&k, &explanation("196", "2", ""))
        .await
        .unwrap());
    assert!(!db
        .insert_explanation(&k, &explanation("196", "1", "Another sentence here."))
        .await
        .unwrap());
    let explanations = db.explanations(&k).await.unwrap();
    assert_eq!(explanations, vec![said, explanation("196", "2", "")]);
}

#[tokio::test]
async fn rows_are_read_only_under_the_key_that_made_them() {
    let dir = ScratchDir::new("recgpt-keys");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("ml-100k@0123", "smollm2.gguf", 1);
    db.insert_profile(&k, &profile("196", &["drama"], None))
        .await
        .unwrap();
    db.insert_item_tags(&k, &item("1", &["animation"]))
        .await
        .unwrap();
    db.insert_explanation(&k, &explanation("196", "1", "You like these films."))
        .await
        .unwrap();
    for other in [
        key("ml-100k@4567", "smollm2.gguf", 1),
        key("ml-100k@0123", "qwen.gguf", 1),
        key("ml-100k@0123", "smollm2.gguf", 2),
    ] {
        assert!(db.profiles(&other).await.unwrap().is_empty(), "{other:?}");
        assert!(db.item_tags(&other).await.unwrap().is_empty(), "{other:?}");
        assert!(db.explanations(&other).await.unwrap().is_empty());
        assert_eq!(
            db.enrichment_counts(&other).await.unwrap(),
            EnrichmentCounts::default()
        );
        // The same user under another key is a new row, not a conflict.
        assert!(db
            .insert_profile(&other, &profile("196", &["comedy"], None))
            .await
            .unwrap());
    }
    assert_eq!(db.profiles(&k).await.unwrap()[0].tags, ["drama"]);
}

#[tokio::test]
async fn counts_include_unusable_replies() {
    let dir = ScratchDir::new("recgpt-counts");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("d", "m", 1);
    db.insert_profile(&k, &profile("1", &["drama"], None))
        .await
        .unwrap();
    db.insert_profile(&k, &profile("2", &[], Some("no usable tags in the reply")))
        .await
        .unwrap();
    db.insert_item_tags(&k, &item("1", &["x-files"]))
        .await
        .unwrap();
    db.insert_item_tags(&k, &item("2", &[])).await.unwrap();
    db.insert_item_tags(&k, &item("3", &[])).await.unwrap();
    db.insert_explanation(&k, &explanation("1", "1", "Three words here."))
        .await
        .unwrap();
    assert_eq!(
        db.enrichment_counts(&k).await.unwrap(),
        EnrichmentCounts {
            profiles: 2,
            profiles_unusable: 1,
            item_tags: 3,
            item_tags_unusable: 2,
            explanations: 1,
            explanations_unusable: 0,
        }
    );
}

#[tokio::test]
async fn non_finite_seconds_are_refused() {
    let dir = ScratchDir::new("recgpt-nan");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("d", "m", 1);
    let mut bad = profile("1", &["drama"], None);
    bad.seconds = f64::NAN;
    let error = db.insert_profile(&k, &bad).await.unwrap_err();
    assert!(matches!(error, Error::NonFinite { .. }), "{error}");
    let mut bad = item("1", &["drama"]);
    bad.seconds = f64::INFINITY;
    assert!(db.insert_item_tags(&k, &bad).await.is_err());
    let mut bad = explanation("1", "1", "Three words here.");
    bad.seconds = f64::NEG_INFINITY;
    assert!(db.insert_explanation(&k, &bad).await.is_err());
    assert_eq!(
        db.enrichment_counts(&k).await.unwrap(),
        EnrichmentCounts::default()
    );
}

#[tokio::test]
async fn unreadable_tags_name_the_table_and_row() {
    let dir = ScratchDir::new("recgpt-corrupt");
    let db = Db::open(&dir.db()).await.unwrap();
    let k = key("d", "m", 1);
    db.insert_item_tags(&k, &item("1", &["drama"]))
        .await
        .unwrap();
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite:{}", dir.db().display()))
        .await
        .unwrap();
    sqlx::query("UPDATE recgpt_item_tags SET tags_json = '{not a list'")
        .execute(&mut raw)
        .await
        .unwrap();
    let error = db.item_tags(&k).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("recgpt_item_tags") && text.contains("tags_json"),
        "{text}"
    );
}
