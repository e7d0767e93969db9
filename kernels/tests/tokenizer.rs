//! Our tokenizers on the real model files: exact round trips over whole novels and Python
//! sources, ids equal to Hugging Face's `tokenizers` (the published Gemma 3
//! `tokenizer.json`; for the byte-level models, a `tokenizer.json` written from the same
//! GGUF vocabulary and merges with the published pre-tokenizer settings), hand-checked
//! encodings, chat templates, streaming, and bad input.
//!
//! A missing asset fails the test with the `scripts/fetch-assets` command to run.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Content, Value};
use kernels::assets::{self, Asset};
use kernels::tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};
use proptest::prelude::*;
use serde_json::{json, Map};

/// One model's GGUF header, with the tokenizer and chat template built from it.
struct Loaded {
    content: Content,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn require(asset: Asset) -> PathBuf {
    asset.require().unwrap_or_else(|e| panic!("{e}"))
}

fn load(asset: Asset) -> Loaded {
    let path = require(asset);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&content, &path).unwrap();
    let template = ChatTemplate::from_gguf(&content, &path).unwrap();
    Loaded {
        content,
        tokenizer,
        template,
    }
}

fn smollm2() -> &'static Loaded {
    static CELL: OnceLock<Loaded> = OnceLock::new();
    CELL.get_or_init(|| load(assets::SMOLLM2))
}

fn qwen() -> &'static Loaded {
    static CELL: OnceLock<Loaded> = OnceLock::new();
    CELL.get_or_init(|| load(assets::QWEN_CODER))
}

fn gemma3() -> &'static Loaded {
    static CELL: OnceLock<Loaded> = OnceLock::new();
    CELL.get_or_init(|| load(assets::GEMMA3))
}

fn all_models() -> [(&'static str, &'static Loaded); 3] {
    [
        ("smollm2", smollm2()),
        ("qwen", qwen()),
        ("gemma3", gemma3()),
    ]
}

/// The six Austen novels, by file name.
fn austen() -> &'static [(String, String)] {
    static CELL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let dir = require(assets::AUSTEN);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 6, "expected six novels in {}", dir.display());
        files
            .iter()
            .map(|p| (name(p), std::fs::read_to_string(p).unwrap()))
            .collect()
    })
}

/// Every top-level module of the Python standard library (about 170 files, 4.7 MB of
/// code: indentation, operators, docstrings, some non-ASCII), in sorted order.
fn python_sources() -> &'static [(String, String)] {
    static CELL: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
            ])
            .output()
            .expect("python3 is needed to find the standard library's sources");
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .collect();
        files.sort();
        let sources: Vec<(String, String)> = files
            .iter()
            .filter_map(|p| Some((name(p), std::fs::read_to_string(p).ok()?)))
            .collect();
        assert!(
            sources.len() >= 100,
            "only {} Python sources in {}",
            sources.len(),
            dir.display()
        );
        sources
    })
}

/// The largest character boundary of `text` at or below `at`.
fn char_floor(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Strings that have broken tokenizers before: every class of character the
/// pre-tokenizers distinguish, runs longer than any whitespace token, text outside
/// Gemma's vocabulary (byte fallback), and special tokens written as plain text.
const TRICKY: &[&str] = &[
    "",
    "Hello world",
    " ",
    "  leading and trailing spaces   ",
    "tabs\tand\t\tmore\ttabs\n\tindented",
    "line\r\nbreaks\r\n\r\n\rmixed\n\n\n",
    "emoji 😀👍🏽 family 👨\u{200d}👩\u{200d}👧\u{200d}👦!",
    "CJK 日本語のテキスト 中文 한국어",
    "combining e\u{301} a\u{308} n\u{303}, precomposed é ä ñ",
    "digits 1234567890 3.14159 ½ ² ٣ Ⅻ",
    "<|im_start|>user\nnot special<|im_end|> <|endoftext|> <start_of_turn> <eos> <bos>",
    "forty spaces                                        then forty newlines\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\tforty tabs",
    "controls \u{0}\u{1}\u{7f}\u{1b}[0m and a BOM \u{feff}",
    "quotes 'single' \"double\" it's I'M we'LL they'Re can't",
    "RTL שלום עולם مرحبا بالعالم",
    "odd spaces a\u{a0}b\u{2003}c\u{3000}d\u{2028}e",
    "outside the vocabulary: \u{e000}\u{10fffd} 𠀀𪛖",
    "if x:\n    return {'a': [1, 2]}  # comment\n",
    "<table><tr><td>html</td></tr></table> [multimodal] <tool_call>",
];

fn assert_round_trip(model: &str, tokenizer: &Tokenizer, label: &str, text: &str) {
    let ids = tokenizer.encode(text, false).unwrap();
    let back = tokenizer.decode(&ids).unwrap();
    if back != text {
        let at = text
            .char_indices()
            .zip(back.chars())
            .find(|((_, a), b)| a != b)
            .map_or(text.len().min(back.len()), |((i, _), _)| i);
        let context: String = text[char_floor(text, at.saturating_sub(40))..]
            .chars()
            .take(80)
            .collect();
        panic!(
            "{model}: {label} does not round-trip; first difference near byte {at}: {context:?}"
        );
    }
}

#[test]
fn round_trip_austen() {
    for (model, loaded) in all_models() {
        for (label, text) in austen() {
            assert_round_trip(model, &loaded.tokenizer, label, text);
        }
    }
}

#[test]
fn round_trip_python_sources() {
    for (model, loaded) in all_models() {
        for (label, text) in python_sources() {
            assert_round_trip(model, &loaded.tokenizer, label, text);
        }
    }
}

#[test]
fn round_trip_tricky_strings() {
    for (model, loaded) in all_models() {
        for text in TRICKY {
            assert_round_trip(model, &loaded.tokenizer, &format!("{text:?}"), text);
        }
    }
}

/// Compares our ids (special tokens parsed, as `tokenizers` always does) with the
/// oracle's, naming the first difference.
fn assert_same_ids(
    model: &str,
    ours: &Tokenizer,
    oracle: &tokenizers::Tokenizer,
    label: &str,
    text: &str,
) {
    let expected = oracle.encode(text, false).unwrap().get_ids().to_vec();
    let got = ours.encode(text, true).unwrap();
    if got != expected {
        let at = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        let window = |ids: &[u32]| {
            let ids = &ids[at.saturating_sub(3)..(at + 4).min(ids.len())];
            format!("{ids:?} {:?}", ours.decode(ids).unwrap())
        };
        panic!(
            "{model}: {label}: ids differ from tokenizers at index {at} ({} vs {} ids)\n  ours:   {}\n  oracle: {}",
            got.len(),
            expected.len(),
            window(&got),
            window(&expected),
        );
    }
}

fn gemma3_oracle() -> &'static tokenizers::Tokenizer {
    static CELL: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    CELL.get_or_init(|| {
        tokenizers::Tokenizer::from_file(require(assets::GEMMA3_TOKENIZER_JSON)).unwrap()
    })
}

#[test]
fn gemma3_ids_equal_published_tokenizer_on_austen() {
    for (label, text) in austen() {
        assert_same_ids("gemma3", &gemma3().tokenizer, gemma3_oracle(), label, text);
    }
}

#[test]
fn gemma3_ids_equal_published_tokenizer_on_python_sources() {
    for (label, text) in python_sources() {
        assert_same_ids("gemma3", &gemma3().tokenizer, gemma3_oracle(), label, text);
    }
}

#[test]
fn gemma3_ids_equal_published_tokenizer_on_tricky_strings() {
    for text in TRICKY {
        assert_same_ids(
            "gemma3",
            &gemma3().tokenizer,
            gemma3_oracle(),
            &format!("{text:?}"),
            text,
        );
    }
}

/// A `tokenizer.json` for a byte-level GGUF vocabulary: its tokens, merges and special
/// tokens, with the pre-tokenizer of the model's published `tokenizer.json` (no
/// normaliser: we do not apply Qwen's NFC, see the tokenizer module).
fn byte_level_oracle(content: &Content, pre_tokenizer: serde_json::Value) -> tokenizers::Tokenizer {
    let array = |key: &str| content.metadata[key].to_vec().unwrap();
    let tokens: Vec<&str> = array("tokenizer.ggml.tokens")
        .iter()
        .map(|v| v.to_string().unwrap().as_str())
        .collect();
    let types: Vec<i32> = array("tokenizer.ggml.token_type")
        .iter()
        .map(|v| v.to_i32().unwrap())
        .collect();
    let merges: Vec<&str> = array("tokenizer.ggml.merges")
        .iter()
        .map(|v| v.to_string().unwrap().as_str())
        .collect();
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.entry(token.to_string()).or_insert(json!(id));
    }
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &kind))| kind == 3 || kind == 4)
        .map(|(id, (token, &kind))| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": kind == 3})
        })
        .collect();
    let config = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    config.to_string().parse().unwrap()
}

fn smollm2_oracle() -> tokenizers::Tokenizer {
    byte_level_oracle(
        &smollm2().content,
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        ]}),
    )
}

fn qwen_oracle() -> tokenizers::Tokenizer {
    byte_level_oracle(
        &qwen().content,
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated", "invert": false, "pattern": {"Regex":
                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        ]}),
    )
}

/// The byte-level tokenizers on both corpora and the tricky strings.
fn byte_level_samples() -> Vec<(String, &'static str)> {
    let novels = austen()
        .iter()
        .map(|(label, text)| (label.clone(), text.as_str()));
    let code = python_sources()
        .iter()
        .map(|(label, text)| (label.clone(), text.as_str()));
    let tricky = TRICKY.iter().map(|text| (format!("{text:?}"), *text));
    novels.chain(code).chain(tricky).collect()
}

#[test]
fn smollm2_ids_equal_tokenizers_with_the_same_vocabulary() {
    let oracle = smollm2_oracle();
    for (label, text) in byte_level_samples() {
        assert_same_ids("smollm2", &smollm2().tokenizer, &oracle, &label, text);
    }
}

#[test]
fn qwen_ids_equal_tokenizers_with_the_same_vocabulary() {
    let oracle = qwen_oracle();
    for (label, text) in byte_level_samples() {
        assert_same_ids("qwen", &qwen().tokenizer, &oracle, &label, text);
    }
}

#[test]
fn known_encodings() {
    let smollm2 = &smollm2().tokenizer;
    // "Hello", "Ġworld", "Ġ", then each digit alone: SmolLM splits numbers into digits.
    assert_eq!(
        smollm2.encode("Hello world 2024", false).unwrap(),
        [19556, 905, 216, 34, 32, 34, 36]
    );
    let qwen = &qwen().tokenizer;
    // Qwen splits digits too, and keeps the space as its own token before them.
    assert_eq!(
        qwen.encode("Hello world 2024", false).unwrap(),
        [9707, 1879, 220, 17, 15, 17, 19]
    );
    // "Hello", "▁world"; no dummy prefix before the first word.
    let gemma = &gemma3().tokenizer;
    assert_eq!(gemma.encode("Hello world", false).unwrap(), [9259, 1902]);
    // Newlines are Gemma's user-defined tokens: "\n" is 107, "\n\n" is 108.
    assert_eq!(gemma.encode("a\n\nb", false).unwrap()[1], 108);
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    for (model, loaded, text, id) in [
        ("smollm2", smollm2(), "<|im_start|>", 1),
        ("qwen", qwen(), "<|im_start|>", 151644),
        ("gemma3", gemma3(), "<start_of_turn>", 105),
    ] {
        let tokenizer = &loaded.tokenizer;
        assert_eq!(tokenizer.token_id(text), Some(id), "{model}");
        assert_eq!(
            tokenizer.encode(&format!("{text}hi"), true).unwrap()[0],
            id,
            "{model}"
        );
        let plain = tokenizer.encode(text, false).unwrap();
        assert!(
            plain.len() > 1 && !plain.contains(&id),
            "{model}: {plain:?}"
        );
        assert_eq!(tokenizer.decode(&[id]).unwrap(), text, "{model}");
    }
}

#[test]
fn bos_eos_and_stop_ids() {
    let smollm2 = &smollm2().tokenizer;
    assert_eq!((smollm2.bos_id(), smollm2.eos_id()), (Some(1), Some(2)));
    // <|endoftext|>, <|im_end|>
    assert_eq!(smollm2.stop_ids(), [0, 2]);
    assert_eq!(
        smollm2.encode_with_bos("Hi").unwrap(),
        smollm2.encode("Hi", false).unwrap()
    );

    let qwen = &qwen().tokenizer;
    assert_eq!(qwen.eos_id(), Some(151645));
    assert_eq!(qwen.stop_ids(), [151643, 151645]);
    assert_eq!(qwen.vocab_size(), 151936);

    let gemma = &gemma3().tokenizer;
    assert_eq!((gemma.bos_id(), gemma.eos_id()), (Some(2), Some(1)));
    // <eos>, <end_of_turn>
    assert_eq!(gemma.stop_ids(), [1, 106]);
    assert_eq!(
        gemma.encode_with_bos("Hello world").unwrap(),
        [2, 9259, 1902]
    );
}

#[test]
fn chat_templates_render_as_the_models_expect() {
    let chat = [
        ChatMessage::user("Hi there"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("Bye"),
    ];
    let with_system = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("  Hi  "),
    ];

    let smollm2 = &smollm2().template;
    assert_eq!(
        smollm2.render(&chat[..1], true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        smollm2.render(&with_system, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi  <|im_end|>\n"
    );

    let qwen = &qwen().template;
    assert_eq!(
        qwen.render(&chat, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        qwen.render(&with_system, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi  <|im_end|>\n<|im_start|>assistant\n"
    );

    let gemma = &gemma3().template;
    assert_eq!(
        gemma.render(&chat, true).unwrap(),
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        gemma.render(&with_system, false).unwrap(),
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
    );
    let err = gemma
        .render(&[ChatMessage::user("a"), ChatMessage::user("b")], true)
        .unwrap_err();
    assert!(err.to_string().contains("alternate"), "{err}");
}

#[test]
fn rendered_chats_encode_with_their_special_tokens() {
    let chat = [ChatMessage::user("Hi")];
    let prompt = gemma3().template.render(&chat, true).unwrap();
    let ids = gemma3().tokenizer.encode_with_bos(&prompt).unwrap();
    let model = gemma3().tokenizer.token_id("model").unwrap();
    // <bos> <start_of_turn> user "\n" Hi <end_of_turn> "\n" <start_of_turn> model "\n"
    assert_eq!(&ids[..2], [2, 105]);
    assert_eq!(&ids[ids.len() - 5..], [106, 107, 105, model, 107]);

    let prompt = qwen().template.render(&chat, true).unwrap();
    let ids = qwen().tokenizer.encode_with_bos(&prompt).unwrap();
    assert_eq!(ids[0], 151644);
    assert_eq!(ids.iter().filter(|&&id| id == 151645).count(), 2);
}

fn stream(tokenizer: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut decoder = StreamDecoder::new(tokenizer);
    let mut text = String::new();
    let mut empty_pushes = 0;
    for &id in ids {
        let piece = decoder.push(id).unwrap();
        empty_pushes += usize::from(piece.is_empty());
        text.push_str(&piece);
    }
    text.push_str(&decoder.finish());
    (text, empty_pushes)
}

#[test]
fn stream_decoder_equals_decode() {
    for (model, loaded) in all_models() {
        let tokenizer = &loaded.tokenizer;
        for text in TRICKY {
            let ids = tokenizer.encode(text, false).unwrap();
            assert_eq!(stream(tokenizer, &ids).0, *text, "{model}");
        }
        // A rare character is several tokens, the first ones incomplete UTF-8.
        let ids = tokenizer.encode("𪛖", false).unwrap();
        assert!(ids.len() > 1, "{model}: {ids:?}");
        assert_eq!(
            stream(tokenizer, &ids),
            ("𪛖".to_string(), ids.len() - 1),
            "{model}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any id sequence, including ones that cut characters or are not UTF-8 at all: ids
    /// come from the first 512 (where all three vocabularies keep their byte tokens) or
    /// from anywhere.
    #[test]
    fn stream_decoder_equals_decode_on_any_ids(
        model in 0usize..3,
        picks in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 0..30),
    ) {
        let tokenizer = &all_models()[model].1.tokenizer;
        let ids: Vec<u32> = picks
            .iter()
            .map(|(low, pick)| pick.index(if *low { 512 } else { tokenizer.vocab_size() }) as u32)
            .collect();
        prop_assert_eq!(stream(tokenizer, &ids).0, tokenizer.decode(&ids).unwrap());
    }
}

#[test]
fn out_of_range_ids_are_errors() {
    for (model, loaded) in all_models() {
        let tokenizer = &loaded.tokenizer;
        let n = tokenizer.vocab_size() as u32;
        assert!(tokenizer.token_bytes(n - 1).is_some(), "{model}");
        assert!(tokenizer.token_bytes(n).is_none(), "{model}");
        let err = tokenizer.decode(&[0, n]).unwrap_err();
        assert!(err.to_string().contains(&n.to_string()), "{model}: {err}");
        assert!(
            StreamDecoder::new(tokenizer).push(u32::MAX).is_err(),
            "{model}"
        );
    }
}

#[test]
fn token_bytes_are_what_the_tokens_decode_to() {
    let qwen = &qwen().tokenizer;
    assert_eq!(qwen.token_bytes(1879), Some(&b" world"[..]));
    let gemma = &gemma3().tokenizer;
    assert_eq!(gemma.token_bytes(1902), Some(&b" world"[..]));
    // <0xE2>, a byte-fallback token.
    let id = gemma.token_id("<0xE2>").unwrap();
    assert_eq!(gemma.token_bytes(id), Some(&[0xE2][..]));
}

// ---- bad model files ----------------------------------------------------------------

/// GPT-2's byte-to-character map, written out the slow way.
fn gpt2_byte_tokens() -> Vec<String> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap().to_string()
        })
        .collect()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A tiny byte-level vocabulary ("h", "e" and "he" among the bytes), with `edit` applied
/// to its metadata, read back through a GGUF file in memory.
fn tiny_gguf(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> kernels::Result<Tokenizer> {
    let mut tokens = gpt2_byte_tokens();
    tokens.push("he".into());
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut metadata = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&["h e"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    edit(&mut metadata);
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &refs, &[]).unwrap();
    bytes.set_position(0);
    let content = Content::read(&mut bytes).unwrap();
    Tokenizer::from_gguf(&content, Path::new("tiny.gguf"))
}

fn set(metadata: &mut Vec<(&'static str, Value)>, key: &'static str, value: Value) {
    metadata.retain(|(k, _)| *k != key);
    metadata.push((key, value));
}

#[test]
fn tiny_vocabulary_works() {
    let tokenizer = tiny_gguf(|_| {}).unwrap();
    assert_eq!(tokenizer.encode("hehe", false).unwrap(), [256, 256]);
    assert_eq!(tokenizer.decode(&[256, 256]).unwrap(), "hehe");
}

#[test]
fn bad_tokenizer_metadata_names_the_key() {
    type Edit = Box<dyn FnOnce(&mut Vec<(&'static str, Value)>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "tokenizer.ggml.tokens",
            Box::new(|m| m.retain(|(k, _)| *k != "tokenizer.ggml.tokens")),
        ),
        (
            "tokenizer.ggml.tokens",
            Box::new(|m| set(m, "tokenizer.ggml.tokens", Value::U32(7))),
        ),
        (
            "tokenizer.ggml.tokens",
            Box::new(|m| set(m, "tokenizer.ggml.tokens", strings(&["a", "b"]))),
        ),
        (
            "tokenizer.ggml.model",
            Box::new(|m| m.retain(|(k, _)| *k != "tokenizer.ggml.model")),
        ),
        (
            "tokenizer.ggml.model",
            Box::new(|m| set(m, "tokenizer.ggml.model", Value::String("bert".into()))),
        ),
        (
            "tokenizer.ggml.pre",
            Box::new(|m| set(m, "tokenizer.ggml.pre", Value::String("falcon".into()))),
        ),
        (
            "tokenizer.ggml.merges",
            Box::new(|m| m.retain(|(k, _)| *k != "tokenizer.ggml.merges")),
        ),
        (
            "tokenizer.ggml.merges",
            Box::new(|m| set(m, "tokenizer.ggml.merges", strings(&["h x"]))),
        ),
        (
            "tokenizer.ggml.merges",
            Box::new(|m| set(m, "tokenizer.ggml.merges", strings(&["he"]))),
        ),
        (
            "tokenizer.ggml.token_type",
            Box::new(|m| {
                set(
                    m,
                    "tokenizer.ggml.token_type",
                    Value::Array(vec![Value::I32(1)]),
                )
            }),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Box::new(|m| set(m, "tokenizer.ggml.eos_token_id", Value::U32(1_000))),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Box::new(|m| set(m, "tokenizer.ggml.eos_token_id", Value::String("2".into()))),
        ),
        (
            "tokenizer.ggml.scores",
            Box::new(|m| {
                set(m, "tokenizer.ggml.model", Value::String("llama".into()));
                set(m, "tokenizer.ggml.add_space_prefix", Value::Bool(false));
            }),
        ),
    ];
    for (key, edit) in cases {
        let err = tiny_gguf(edit).expect_err(key).to_string();
        assert!(
            err.contains("tiny.gguf") && err.contains(&format!("`{key}`")),
            "expected an error naming `{key}`, got: {err}"
        );
    }
}

#[test]
fn not_a_gguf_file_is_an_error() {
    let path =
        std::env::temp_dir().join(format!("evokernel-tokenizer-{}.gguf", std::process::id()));
    std::fs::write(&path, b"this is not a GGUF file").unwrap();
    let err = Tokenizer::from_gguf_file(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn bytes_missing_from_a_byte_level_vocabulary_are_dropped() {
    // SmolLM2 has no token for byte 0x04, so, as in llama.cpp and tokenizers, it is lost.
    let smollm2 = &smollm2().tokenizer;
    let ids = smollm2.encode("a\u{4}b", false).unwrap();
    assert_eq!(smollm2.decode(&ids).unwrap(), "ab");
}
