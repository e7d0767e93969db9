//! Every note in the knowledge base is embedded, titled, and carries an example that
//! parses and passes the static checks, so the research stage never shows a model bad AKL.

use agent::knowledge;
use kernels::akl::parse_and_check;

#[test]
fn every_note_is_embedded_and_its_example_checks() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge");
    let files = std::fs::read_dir(folder).unwrap().count();
    assert_eq!(
        knowledge::notes().count(),
        files,
        "add the new note to knowledge.rs"
    );
    for note in knowledge::notes() {
        assert!(!note.title().is_empty(), "{} has no title", note.name);
        let example = note
            .example()
            .unwrap_or_else(|| panic!("{} has no ```akl example", note.name));
        if let Err(e) = parse_and_check(example) {
            panic!("{}: {e}\n{example}", note.name);
        }
    }
    assert!(knowledge::find("attention_sinks").is_some());
}
