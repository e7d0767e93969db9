//! RecGPT's prompts and the lenient reading of replies, with no model: well-formed,
//! malformed, empty and overlong replies, and tags that always come out normalised.

use agent::recgpt::parse::{
    grounding, normalise_tag, parse_explanation, parse_profile, parse_tags, Grounding,
    MAX_PROFILE_CHARS, MAX_SENTENCE_CHARS, MAX_TAGS, MAX_TAG_CHARS,
};
use agent::recgpt::prompt::{
    display_title, explanation_request, item_tags_request, liked_like, profile_request, MAX_LIKED,
};
use agent::recgpt::{dataset_fingerprint, profile_history, Plan, PlanConfig, MAX_PROFILE_ITEMS};
use proptest::prelude::*;
use recsys::data::{Dataset, Item, ItemMeta};

fn film(title: &str, year: Option<i32>, genres: &[&str]) -> ItemMeta {
    ItemMeta {
        title: title.into(),
        year,
        genres: genres.iter().map(|g| g.to_string()).collect(),
    }
}

fn dataset() -> Dataset {
    Dataset {
        name: "films".into(),
        items: (0..30)
            .map(|i| Item {
                raw_id: (100 + i).to_string(),
                meta: film(&format!("Film {i}"), Some(1990 + i), &["Drama"]),
            })
            .collect(),
        users: vec!["a".into(), "b".into(), "c".into()],
        histories: vec![(0..25).collect(), vec![3, 4], vec![5, 6, 7]],
    }
}

#[test]
fn a_profile_prompt_lists_the_history_in_order_with_years_and_genres() {
    let toy = film(
        "Toy Story",
        Some(1995),
        &["Animation", "Children's", "Comedy"],
    );
    let heat = film("Heat", None, &[]);
    let request = profile_request(&[&toy, &heat]);
    let toy_at = request
        .user
        .find("- Toy Story (1995) [Animation, Children's, Comedy]");
    let heat_at = request.user.find("- Heat\n");
    assert!(toy_at.is_some() && heat_at.is_some(), "{}", request.user);
    assert!(toy_at < heat_at, "oldest first");
    assert!(request
        .user
        .ends_with("In one sentence, what kind of movies does this viewer enjoy?"));
    assert_eq!(
        request.temperature, 0.0,
        "greedy, so a rerun is reproducible"
    );
}

#[test]
fn item_and_explanation_prompts_carry_what_they_are_about() {
    let toy = film("Toy Story", Some(1995), &["Animation", "Comedy"]);
    let tags = item_tags_request(&toy);
    assert!(tags
        .user
        .contains("Toy Story (1995), a Animation, Comedy movie"));
    let aladdin = film("Aladdin", Some(1992), &["Animation", "Musical"]);
    let why = explanation_request(
        &["family".into(), "animation".into()],
        &[&aladdin],
        &toy,
        &["toys".into(), "friendship".into()],
    );
    assert!(why.user.contains("The viewer's tastes: family, animation."));
    assert!(why
        .user
        .contains("Movies this viewer liked: Aladdin (1992) [Animation, Musical]."));
    assert!(why.user.contains(
        "Recommended movie: Toy Story (1995) [Animation, Comedy]. Keywords: toys, friendship."
    ));
    assert!(why
        .user
        .ends_with("why they may enjoy Toy Story, comparing it with a movie they liked."));
    let bare = explanation_request(&[], &[], &film("Usual Suspects, The", None, &[]), &[]);
    assert_eq!(
        bare.user,
        "Recommended movie: The Usual Suspects.\nIn one sentence, tell the viewer why they may enjoy The Usual Suspects."
    );
    assert!(tags.max_tokens > 0 && why.max_tokens > 0);
    assert_eq!((tags.seed, why.seed), (0, 0));
}

#[test]
fn catalogue_titles_read_with_their_article_first() {
    assert_eq!(display_title("Usual Suspects, The"), "The Usual Suspects");
    assert_eq!(
        display_title("Cité des enfants perdus, La"),
        "La Cité des enfants perdus"
    );
    assert_eq!(display_title("Room with a View, A"), "A Room with a View");
    assert_eq!(display_title("Toy Story"), "Toy Story");
    assert_eq!(display_title("Theme, The, The"), "The Theme, The");
    assert_eq!(display_title(""), "");
}

#[test]
fn an_explanation_points_to_the_watched_movies_most_like_the_item() {
    let drama = film("Old Drama", None, &["Drama"]);
    let crime = film("Crime One", None, &["Crime", "Drama"]);
    let thriller = film("Thriller Two", None, &["Thriller"]);
    let newer_crime = film("Crime Three", None, &["Crime", "Thriller"]);
    let comedy = film("Comedy", None, &["Comedy"]);
    let item = film("Heist", None, &["Crime", "Drama", "Thriller"]);
    let none: &[String] = &[];
    let noir = ["noir".to_string()];
    let history = [
        (&drama, none),
        (&crime, none),
        (&thriller, &noir[..]),
        (&newer_crime, none),
        (&comedy, none),
        (&item, none),
    ];
    // Crime One and Crime Three share two genres; Thriller Two one genre and the tag.
    let liked = liked_like(&history, &item, &noir);
    assert_eq!(liked.len(), MAX_LIKED);
    assert_eq!(
        liked,
        [&newer_crime, &thriller],
        "ties go to the more recent"
    );
    let liked_no_tags = liked_like(&history, &item, &[]);
    assert_eq!(liked_no_tags, [&newer_crime, &crime]);
    assert!(
        liked_like(&[(&comedy, none)], &item, &[]).is_empty(),
        "nothing in common, nothing shown"
    );
}

#[test]
fn grounding_finds_the_titles_a_sentence_names() {
    let liked = ["Godfather, The", "Star Wars: Episode IV"];
    assert_eq!(
        grounding(
            "Like The Godfather, the usual suspects is a twisty crime story.",
            "Usual Suspects, The",
            &liked
        ),
        Grounding {
            names_item: true,
            names_liked: true
        }
    );
    assert_eq!(
        grounding(
            "You enjoy thrilling star-wars adventures.",
            "Usual Suspects, The",
            &liked
        ),
        Grounding {
            names_item: false,
            names_liked: true
        },
        "punctuation aside, the core title's words in order"
    );
    assert_eq!(
        grounding(
            "This viewer enjoys action movies.",
            "Usual Suspects, The",
            &liked
        ),
        Grounding::default()
    );
    assert!(!grounding("Suspects, usual.", "Usual Suspects, The", &[]).names_item);
    assert!(!grounding("Anything at all.", "", &[""]).names_item);
}

#[test]
fn a_well_formed_profile_parses() {
    let parsed = parse_profile(
        "PROFILE: Enjoys dark thrillers and crime stories.\nTAGS: Thriller, crime, Dark Mood, noir",
    );
    assert_eq!(parsed.profile, "Enjoys dark thrillers and crime stories.");
    assert_eq!(parsed.tags, ["thriller", "crime", "dark mood", "noir"]);
    assert_eq!(parsed.problem, None);
}

#[test]
fn without_a_tag_line_the_profile_s_own_lists_are_the_tags() {
    let parsed = parse_profile("This viewer enjoys a mix of comedies, dramas, and sci-fi movies.");
    assert_eq!(parsed.tags, ["comedies", "dramas", "sci-fi"]);
    assert_eq!(parsed.problem, None);
    let numbered = parse_tags("1. Heavyweights (1994)\n2. Children's Comedy Movie");
    assert_eq!(
        numbered.tags,
        ["children's comedy movie"],
        "echoes of the prompt are dropped"
    );
}

#[test]
fn tags_before_the_profile_are_read_too() {
    let parsed = parse_profile("TAGS: western, outlaws\nPROFILE: Likes lonely gunfighters.");
    assert_eq!(parsed.profile, "Likes lonely gunfighters.");
    assert_eq!(parsed.tags, ["western", "outlaws"]);
}

#[test]
fn markdown_bullets_and_a_missing_profile_label_are_tolerated() {
    let parsed = parse_profile(
        "This viewer loves **sci-fi** adventures\nand space operas.\n\n**Tags:**\n- Sci-Fi\n- space opera\n* 1. Adventure\n- sci-fi\n",
    );
    assert_eq!(
        parsed.profile,
        "This viewer loves **sci-fi** adventures and space operas."
    );
    assert_eq!(parsed.tags, ["sci-fi", "space opera", "adventure"]);
    assert_eq!(parsed.problem, None);
}

#[test]
fn a_reply_without_tags_is_recorded_as_such() {
    let parsed = parse_profile("The viewer: 1995, 1996.");
    assert!(parsed.tags.is_empty());
    assert_eq!(parsed.profile, "The viewer: 1995, 1996.");
    assert_eq!(
        parsed.problem.as_deref(),
        Some("no usable tags in the reply")
    );

    let empty = parse_profile("");
    assert!(empty.profile.is_empty() && empty.tags.is_empty());
    assert_eq!(
        empty.problem.as_deref(),
        Some("no profile text in the reply; no usable tags in the reply")
    );

    let only_junk = parse_tags("TAGS: , ; ... | 123 | tags | etc");
    assert!(only_junk.tags.is_empty());
    assert!(only_junk.problem.is_some());
}

#[test]
fn overlong_replies_are_bounded() {
    let long_profile = "likes long films ".repeat(100);
    let parsed = parse_profile(&format!("PROFILE: {long_profile}\nTAGS: drama"));
    assert!(parsed.profile.chars().count() <= MAX_PROFILE_CHARS);
    assert!(parsed.profile.chars().count() > MAX_PROFILE_CHARS - 20);
    assert!(
        long_profile.starts_with(&parsed.profile)
            && long_profile[parsed.profile.len()..].starts_with(' '),
        "cut at a word boundary: {}",
        parsed.profile
    );

    let many: Vec<String> = (0..20).map(|i| format!("genre{i}")).collect();
    let tags = parse_tags(&format!("TAGS: {}", many.join(", ")));
    assert_eq!(tags.tags.len(), MAX_TAGS);
    assert_eq!(tags.tags[0], "genre0");

    let sentence_as_tag = "this is not a tag but a long sentence about the film";
    let tags = parse_tags(&format!(
        "TAGS: western, {sentence_as_tag}, {}",
        "x".repeat(40)
    ));
    assert_eq!(tags.tags, ["western"]);

    let why = parse_explanation(&"word ".repeat(200));
    assert!(why.sentence.chars().count() <= MAX_SENTENCE_CHARS);
    assert_eq!(why.problem, None);
}

#[test]
fn item_tags_without_a_label_are_read_from_the_reply() {
    assert_eq!(
        parse_tags("Adventure, Family, \"Heartwarming\", 80s").tags,
        ["adventure", "family", "heartwarming", "80s"]
    );
    assert_eq!(
        parse_tags("Here are the tags:\nTAGS: #comedy #satire, romance.").tags,
        ["comedy", "satire", "romance"]
    );
}

#[test]
fn explanations_keep_the_first_sentence_without_label_or_quotes() {
    let parsed = parse_explanation(
        "Explanation: \"You will love its witty dialogue. It also has great music!\"",
    );
    assert_eq!(parsed.sentence, "You will love its witty dialogue.");
    assert_eq!(parsed.problem, None);
    let cut = parse_explanation("Because you enjoy heist films and clever plots");
    assert_eq!(
        cut.sentence,
        "Because you enjoy heist films and clever plots"
    );
    for bad in ["", "   \n ", "Yes.", "\"\""] {
        let parsed = parse_explanation(bad);
        assert!(parsed.sentence.is_empty(), "{bad:?}");
        assert!(parsed.problem.is_some(), "{bad:?}");
    }
}

#[test]
fn tags_are_normalised() {
    assert_eq!(
        normalise_tag("  Film  Noir. ").as_deref(),
        Some("film noir")
    );
    assert_eq!(
        normalise_tag("2) dark_comedy").as_deref(),
        Some("dark comedy")
    );
    assert_eq!(normalise_tag("Children's").as_deref(), Some("children's"));
    assert_eq!(normalise_tag("3D").as_deref(), Some("3d"));
    assert_eq!(normalise_tag("<tag>"), None);
    assert_eq!(normalise_tag("1995"), None);
    assert_eq!(normalise_tag(""), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the model says, parsing returns normalised, bounded, unique tags.
    #[test]
    fn any_reply_parses_to_normalised_tags(reply in "(?s).{0,400}") {
        for tags in [parse_profile(&reply).tags, parse_tags(&reply).tags] {
            prop_assert!(tags.len() <= MAX_TAGS);
            for (i, tag) in tags.iter().enumerate() {
                prop_assert_eq!(tag, &tag.to_lowercase());
                prop_assert_eq!(tag.trim(), tag.as_str());
                prop_assert!(!tag.is_empty() && tag.chars().count() <= MAX_TAG_CHARS);
                prop_assert!(!tags[..i].contains(tag));
            }
        }
        let why = parse_explanation(&reply);
        prop_assert!(why.sentence.chars().count() <= MAX_SENTENCE_CHARS);
        prop_assert_eq!(why.sentence.is_empty(), why.problem.is_some());
    }
}

#[test]
fn a_profile_is_written_from_the_history_without_its_held_out_item() {
    let data = dataset();
    let h = profile_history(&data, 0);
    assert_eq!(h.len(), MAX_PROFILE_ITEMS);
    assert_eq!(h.last(), Some(&23), "item 24 is user a's test target");
    assert_eq!(profile_history(&data, 1), [3, 4], "no test case: all of it");
    assert_eq!(profile_history(&data, 2), [5, 6]);
}

#[test]
fn the_fingerprint_follows_the_content() {
    let data = dataset();
    let fp = dataset_fingerprint(&data);
    assert!(fp.starts_with("films@"), "{fp}");
    assert_eq!(fp, dataset_fingerprint(&data.clone()));
    let mut other = data.clone();
    other.histories[2].push(8);
    assert_ne!(fp, dataset_fingerprint(&other));
    let mut renamed = data;
    renamed.items[0].meta.title = "Another".into();
    assert_ne!(fp, dataset_fingerprint(&renamed));
}

#[test]
fn a_plan_without_a_model_tags_the_items_of_the_profiled_histories() {
    let data = dataset();
    let config = PlanConfig {
        users: 2,
        items: None,
        k: 5,
        explain_users: None,
    };
    let plan = Plan::build(&data, &config, None).unwrap();
    assert_eq!(plan.users, [0, 1]);
    let expected: Vec<u32> = (3..24).collect();
    assert_eq!(
        plan.items, expected,
        "sorted, unique, held-out item 24 left out"
    );
    assert!(plan.explanations.is_empty());
    let first_items = Plan::build(
        &data,
        &PlanConfig {
            items: Some(4),
            users: 99,
            ..config
        },
        None,
    )
    .unwrap();
    assert_eq!(first_items.items, [0, 1, 2, 3]);
    assert_eq!(first_items.users, [0, 1, 2], "at most every user");
}
