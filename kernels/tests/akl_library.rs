//! Every library kernel parses, checks, compiles, and is stored in canonical form.

use std::path::Path;

use kernels::akl::{check, compile, library, parse, print, HeadSpec};

#[test]
fn every_library_file_is_canonical_and_checks() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("library");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("kernels/library exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "akl"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        library::LIBRARY.len(),
        "every file is embedded in library.rs"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable file");
        let program = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        assert_eq!(
            program.name,
            stem,
            "{}: the kernel is named after its file",
            path.display()
        );
        assert_eq!(
            print(&program),
            text,
            "{} is not in canonical form",
            path.display()
        );
        let checked = check(&program).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        compile(&checked, 12, 8).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(library::source(stem), Some(text.as_str()));
        assert!(library::checked(stem).is_ok());
    }
}

#[test]
fn gemma3_makes_every_sixth_layer_global() {
    let plans = compile(library::checked("gemma3").unwrap(), 12, 4).unwrap();
    for plan in &plans {
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].heads, 0..4);
        let global = matches!(plan.groups[0].spec, HeadSpec::Exact);
        assert_eq!(global, plan.layer % 6 == 5, "layer {}", plan.layer);
    }
}

#[test]
fn head_mix_gives_the_first_two_heads_exact_attention() {
    let plans = compile(library::checked("head_mix").unwrap(), 2, 8).unwrap();
    for plan in &plans {
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].heads, 0..2);
        assert!(matches!(plan.groups[0].spec, HeadSpec::Exact));
        assert_eq!(plan.groups[1].heads, 2..8);
        assert!(matches!(plan.groups[1].spec, HeadSpec::Rule { .. }));
    }
}
