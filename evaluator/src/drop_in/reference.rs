//! Exact attention's outputs, kept on disk so that each slice runs through the exact model
//! once per model file.
//!
//! Full-vocabulary logits would be `vocab` floats a token (49 152 for SmolLM2: 1.6 GB for
//! 8k tokens). We keep the final hidden states instead (`d_model` floats a token, 576 for
//! SmolLM2: 19 MB for 8k) and recompute the logits through the output head, which gives the
//! same logits bit for bit and costs a fraction of a forward pass. A file is keyed by the
//! model's SHA-256 and the slice id, holds the slice's tokens (so a changed text is never
//! mistaken for the old one), and ends with a SHA-256 of everything before it; a file that
//! is short, long, for other tokens or fails its checksum is recomputed, never trusted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use kernels::akl::sha256::sha256_hex;
use kernels::attention::AttentionKernel;
use kernels::Model;

use super::slices::Slice;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"EVKEXACT";
const VERSION: u32 = 1;
/// The SHA-256 at the end of a file, as hex.
const CHECKSUM_LEN: usize = 64;

/// What the cache did for one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid file was read.
    Hit,
    /// No file yet: computed and written.
    Missing,
    /// A file was there but could not be trusted (the reason); computed and rewritten.
    Rejected(String),
}

/// Exact-attention final hidden states on disk, one file per (model, slice).
#[derive(Clone, Debug)]
pub struct ReferenceCache {
    dir: PathBuf,
}

impl ReferenceCache {
    pub fn new(dir: impl Into<PathBuf>) -> ReferenceCache {
        ReferenceCache { dir: dir.into() }
    }

    /// The file that holds `slice`'s reference for the model with hash `model_sha256`.
    pub fn path(&self, model_sha256: &str, slice: &Slice) -> PathBuf {
        let name: String = slice
            .id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir
            .join("exact")
            .join(&model_sha256[..16.min(model_sha256.len())])
            .join(format!("{name}.bin"))
    }

    /// The exact model's final hidden states `[tokens, d_model]` for `slice`: read from the
    /// cache when a valid file is there, else computed with `exact` (the model's own
    /// kernels) and written.
    pub fn hidden_states(
        &self,
        model: &Model,
        model_sha256: &str,
        exact: &[Arc<dyn AttentionKernel>],
        slice: &Slice,
    ) -> Result<(Vec<f32>, CacheOutcome)> {
        let path = self.path(model_sha256, slice);
        let d_model = model.config.d_model;
        let outcome = match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes, d_model, &slice.tokens) {
                Ok(hidden) => return Ok((hidden, CacheOutcome::Hit)),
                Err(reason) => CacheOutcome::Rejected(reason),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Missing,
            Err(e) => CacheOutcome::Rejected(e.to_string()),
        };
        let mut cache = model.new_cache();
        let hidden = model.forward_hidden_with(&mut cache, &slice.tokens, exact)?;
        write_atomically(&path, &encode(&hidden, d_model, &slice.tokens))?;
        Ok((hidden, outcome))
    }
}

fn encode(hidden: &[f32], d_model: usize, tokens: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24 + 4 * (tokens.len() + hidden.len()) + CHECKSUM_LEN);
    bytes.extend_from_slice(MAGIC);
    for n in [VERSION, d_model as u32, tokens.len() as u32] {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    tokens
        .iter()
        .for_each(|t| bytes.extend_from_slice(&t.to_le_bytes()));
    hidden
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    let checksum = sha256_hex(&bytes);
    bytes.extend_from_slice(checksum.as_bytes());
    bytes
}

/// The hidden states in a file, or why the file cannot be trusted.
fn decode(bytes: &[u8], d_model: usize, tokens: &[u32]) -> std::result::Result<Vec<f32>, String> {
    let header = 8 + 3 * 4;
    let expected = header + 4 * tokens.len() * (1 + d_model) + CHECKSUM_LEN;
    if bytes.len() != expected {
        return Err(format!("{} bytes, expected {expected}", bytes.len()));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if sha256_hex(body).as_bytes() != checksum {
        return Err("checksum mismatch".into());
    }
    let word = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    if &body[..8] != MAGIC || word(8) != VERSION {
        return Err("not a version-1 reference file".into());
    }
    if word(12) as usize != d_model || word(16) as usize != tokens.len() {
        return Err("made for another model shape or length".into());
    }
    let stored = (0..tokens.len()).map(|i| word(header + 4 * i));
    if !stored.eq(tokens.iter().copied()) {
        return Err("made for other tokens".into());
    }
    let start = header + 4 * tokens.len();
    Ok(body[start..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source: std::io::Error| {
        Error::Kernels(kernels::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A name no other writer uses, in this process or another.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let unique = WRITES.fetch_add(1, Ordering::Relaxed);
    let temp = path.with_extension(format!("tmp{}-{unique}", std::process::id()));
    std::fs::write(&temp, bytes).map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

/// The SHA-256 of the file at `path`, computed once per (path, size, modification time) and
/// remembered in `cache_dir`.
pub fn model_sha256(path: &Path, cache_dir: &Path) -> Result<String> {
    let io = |source: std::io::Error| {
        Error::Kernels(kernels::Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let canonical = path.canonicalize().map_err(io)?;
    let meta = std::fs::metadata(&canonical).map_err(io)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}|{}|{modified}", canonical.display(), meta.len());
    let memo = cache_dir
        .join("model-sha256")
        .join(sha256_hex(key.as_bytes()));
    if let Ok(text) = std::fs::read_to_string(&memo) {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(text.to_string());
        }
    }
    let sha = sha256_hex(&std::fs::read(&canonical).map_err(io)?);
    write_atomically(&memo, sha.as_bytes())?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_back_and_any_damage_is_refused() {
        let (d, tokens) = (3, vec![7u32, 8]);
        let hidden = vec![0.5f32, -1.0, 2.0, 3.5, f32::MIN_POSITIVE, 0.0];
        let bytes = encode(&hidden, d, &tokens);
        assert_eq!(decode(&bytes, d, &tokens).unwrap(), hidden);

        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(
            decode(&flipped, d, &tokens).unwrap_err(),
            "checksum mismatch"
        );
        let short = &bytes[..bytes.len() - 1];
        assert!(decode(short, d, &tokens).unwrap_err().contains("expected"));
        assert!(decode(&bytes, d, &[7, 9])
            .unwrap_err()
            .contains("other tokens"));
        assert!(decode(&bytes, 2, &tokens).is_err());
    }

    #[test]
    fn the_model_hash_is_remembered_by_path_size_and_time() {
        let dir = std::env::temp_dir().join(format!("evk-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.bin");
        std::fs::write(&file, b"abc").unwrap();
        let sha = model_sha256(&file, &dir).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let memo = std::fs::read_dir(dir.join("model-sha256")).unwrap().count();
        assert_eq!(memo, 1);
        std::fs::write(&file, b"abcd").unwrap();
        assert_ne!(model_sha256(&file, &dir).unwrap(), sha);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
