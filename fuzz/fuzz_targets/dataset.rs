//! The dataset loaders on arbitrary files. The first byte picks the format (RecBole atomic,
//! MovieLens-100K, -1M, latest) and the load options; the rest is the ratings file, and after
//! a NUL byte, the items file. The files go to a scratch directory, loaded as `Dataset::load`
//! does, then split leave-one-out.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recsys::data::{Dataset, LoadOptions, Split};

const FORMATS: [(&str, &str); 4] = [
    ("fuzz.inter", "fuzz.item"),
    ("u.data", "u.item"),
    ("ratings.dat", "movies.dat"),
    ("ratings.csv", "movies.csv"),
];

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join(format!("evokernel-fuzz-{}", std::process::id()))
            .join("fuzz");
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&choice, rest)) = bytes.split_first() else {
        return;
    };
    let (ratings_name, items_name) = FORMATS[usize::from(choice & 3)];
    let options = LoadOptions {
        min_rating: (choice & 4 != 0).then_some(3.5),
        k_core: (choice & 8 != 0).then_some(usize::from(choice >> 4)),
    };
    let dir = scratch();
    for entry in std::fs::read_dir(dir).expect("list the scratch directory") {
        std::fs::remove_file(entry.expect("scratch entry").path()).expect("clear the scratch");
    }
    let (ratings, items) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    std::fs::write(dir.join(ratings_name), ratings).expect("write ratings");
    if let Some(items) = items {
        std::fs::write(dir.join(items_name), items).expect("write items");
    }
    if let Ok(data) = Dataset::load(dir, &options) {
        let _ = Split::leave_one_out(&data);
    }
});
