//! Each loader on small files written here, the k-core, the split, and bad lines.

use std::path::PathBuf;

use recsys::data::{Dataset, LoadOptions, Split};
use recsys::Error;

/// A fresh directory named `name` holding `files`.
fn dir_with(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("recsys-data-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, body) in files {
        std::fs::write(dir.join(file), body).unwrap();
    }
    dir
}

fn titles(data: &Dataset, user: usize) -> Vec<&str> {
    data.histories[user]
        .iter()
        .map(|&i| data.items[i as usize].meta.title.as_str())
        .collect()
}

#[test]
fn atomic_files_load_with_metadata_and_time_order() {
    let dir = dir_with(
        "tiny",
        &[
            (
                "tiny.inter",
                b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
                  1\t10\t5\t300\n1\t20\t3\t100\n2\t10\t4\t50\n1\t30\t4\t100\n"
                    as &[u8],
            ),
            (
                "tiny.item",
                "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
                 10\tToy Story\t1995\tAnimation Comedy\n20\tMisérables, Les\t1995\tDrama\n\
                 30\tHeat\t\tAction\n"
                    .as_bytes(),
            ),
        ],
    );
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(data.users, vec!["1", "2"]);
    // Items 20 and 30 share timestamp 100: file order (20 first) breaks the tie.
    assert_eq!(titles(&data, 0), ["Misérables, Les", "Heat", "Toy Story"]);
    assert_eq!(titles(&data, 1), ["Toy Story"]);
    let toy = &data.items[data.item_index()["10"] as usize].meta;
    assert_eq!(toy.year, Some(1995));
    assert_eq!(toy.genres, ["Animation", "Comedy"]);
    assert_eq!(data.items[data.item_index()["30"] as usize].meta.year, None);
}

#[test]
fn ml100k_reads_latin1_titles_and_genre_flags() {
    let flags = |set: &[usize]| -> String {
        (0..19)
            .map(|i| if set.contains(&i) { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut item = format!(
        "1|Toy Story (1995)|01-Jan-1995||http://x|{}\n",
        flags(&[3, 4, 5])
    )
    .into_bytes();
    // "Misérables, Les (1995)" in Latin-1: é is the single byte 0xE9.
    item.extend_from_slice(b"2|Mis\xe9rables, Les (1995)|01-Jan-1995||http://y|");
    item.extend_from_slice(flags(&[8]).as_bytes());
    item.push(b'\n');
    let dir = dir_with(
        "ml100k",
        &[
            ("u.data", b"7\t1\t4\t20\n7\t2\t2\t10\n8\t2\t5\t5\n"),
            ("u.item", &item),
        ],
    );
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(titles(&data, 0), ["Misérables, Les", "Toy Story"]);
    let toy = &data.items[data.item_index()["1"] as usize].meta;
    assert_eq!(toy.genres, ["Animation", "Children's", "Comedy"]);
    assert_eq!(toy.year, Some(1995));
    // A rating threshold of 4 drops the two low ratings.
    let liked = Dataset::load(
        &dir,
        &LoadOptions {
            min_rating: Some(4.0),
            k_core: None,
        },
    )
    .unwrap();
    assert_eq!(liked.n_interactions(), 2);
}

#[test]
fn ml1m_double_colon_files() {
    let dir = dir_with(
        "ml1m",
        &[
            (
                "ratings.dat",
                b"1::1193::5::978300760\n1::661::3::978302109\n",
            ),
            (
                "movies.dat",
                b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n\
                  661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
            ),
        ],
    );
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(
        titles(&data, 0),
        [
            "One Flew Over the Cuckoo's Nest",
            "James and the Giant Peach"
        ]
    );
    let peach = &data.items[data.item_index()["661"] as usize].meta;
    assert_eq!(peach.genres, ["Animation", "Children's", "Musical"]);
    assert_eq!(peach.year, Some(1996));
}

#[test]
fn ml_latest_csv_with_quoted_titles() {
    let dir = dir_with(
        "latest",
        &[
            (
                "ratings.csv",
                b"userId,movieId,rating,timestamp\n1,11,4.0,964982703\n1,12,3.5,964981247\n",
            ),
            (
                "movies.csv",
                b"movieId,title,genres\n11,\"American President, The (1995)\",Comedy|Drama|Romance\n\
                  12,\"Say \"\"Cheese\"\" (2001)\",(no genres listed)\n",
            ),
        ],
    );
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(
        titles(&data, 0),
        ["Say \"Cheese\"", "American President, The"]
    );
    let say = &data.items[data.item_index()["12"] as usize].meta;
    assert!(say.genres.is_empty());
    assert_eq!(say.year, Some(2001));
}

#[test]
fn a_bad_line_names_the_file_and_line() {
    let dir = dir_with("bad", &[("u.data", b"1\t1\t4\t10\n1\t2\tfive\t11\n")]);
    let err = Dataset::load(&dir, &LoadOptions::default()).unwrap_err();
    match &err {
        Error::BadLine { path, line, reason } => {
            assert!(path.ends_with("u.data"), "{err}");
            assert_eq!(*line, 2);
            assert!(reason.contains("rating `five`"), "{err}");
        }
        other => panic!("expected a bad-line error, got {other}"),
    }
    let atomic = dir_with(
        "bad_atomic",
        &[(
            "bad_atomic.inter",
            b"user_id:token\titem_id:token\n1\t2\n3\n" as &[u8],
        )],
    );
    let err = Dataset::load(&atomic, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bad_atomic.inter:3:"), "{err}");
}

#[test]
fn k_core_iterates_to_a_fixed_point() {
    // Users a, b, c each rate x and y; user d rates x and z. With k = 2, z (one rating) goes,
    // then d has one rating left and goes too; then x has three and everything else stays.
    let lines: String = [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("b", "y"),
        ("c", "x"),
        ("c", "y"),
        ("d", "x"),
        ("d", "z"),
    ]
    .iter()
    .enumerate()
    .map(|(t, (u, i))| format!("{u}\t{i}\t5\t{t}\n"))
    .collect();
    let dir = dir_with("kcore", &[("u.data", lines.as_bytes())]);
    let data = Dataset::load(
        &dir,
        &LoadOptions {
            min_rating: None,
            k_core: Some(2),
        },
    )
    .unwrap();
    assert_eq!(data.users, ["a", "b", "c"]);
    assert_eq!(data.items.len(), 2);
    let every_count_at_least_2 = data.histories.iter().all(|h| h.len() >= 2);
    assert!(every_count_at_least_2);
}

#[test]
fn leave_one_out_holds_out_the_last_two() {
    let dir = dir_with(
        "split",
        &[(
            "u.data",
            b"u\ta\t5\t1\nu\tb\t5\t2\nu\tc\t5\t3\nu\td\t5\t4\nv\ta\t5\t1\nv\tb\t5\t2\n",
        )],
    );
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    let split = Split::leave_one_out(&data);
    let id = |raw: &str| data.item_index()[raw];
    assert_eq!(
        split.train,
        vec![vec![id("a"), id("b")], vec![id("a"), id("b")]]
    );
    assert_eq!(
        split.valid.len(),
        1,
        "v has only two interactions: it only trains"
    );
    assert_eq!(split.valid[0].history, [id("a"), id("b")]);
    assert_eq!(split.valid[0].target, id("c"));
    assert_eq!(split.test[0].history, [id("a"), id("b"), id("c")]);
    assert_eq!(split.test[0].target, id("d"));
}

#[test]
fn the_real_ml100k_atomic_files_load() {
    let dir = kernels::assets::MOVIELENS_100K
        .require()
        .unwrap_or_else(|e| panic!("{e}"));
    let data = Dataset::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(data.users.len(), 943);
    assert_eq!(data.items.len(), 1682);
    assert_eq!(data.n_interactions(), 100_000);
    let toy = &data.items[data.item_index()["1"] as usize].meta;
    assert_eq!(toy.title, "Toy Story");
}
