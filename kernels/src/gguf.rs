//! Reading a GGUF file with errors that name the file and the key or tensor at fault.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::{Error, Result};

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut reader = BufReader::new(file);
        let bad = |reason: String| Error::BadGguf {
            path: path.to_path_buf(),
            reason,
        };
        // candle-core divides by the declared alignment, so a zero would panic inside it.
        if declares_zero_alignment(&mut reader, file_len) {
            return Err(bad(
                "`general.alignment` is 0; it must be a positive number of bytes".into(),
            ));
        }
        reader
            .seek(SeekFrom::Start(0))
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
        // A truncated download still has a whole header; catch it here rather than at the
        // first missing tensor, many seconds into loading.
        for (name, info) in &content.tensor_infos {
            let dims = info.shape.dims();
            let bytes = tensor_bytes(info.ggml_dtype, dims)
                .ok_or_else(|| bad(format!("tensor `{name}` has impossible dims {dims:?}")))?;
            // candle-core reads a tensor into a byte buffer and views it as blocks; an empty
            // buffer's dangling pointer is not aligned for them.
            if bytes == 0 {
                return Err(bad(format!(
                    "tensor `{name}` holds no data: dims {dims:?} in {:?}",
                    info.ggml_dtype
                )));
            }
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes as u64);
            if end > file_len {
                return Err(bad(format!(
                    "tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated download? re-run scripts/fetch-assets)"
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor's shape (row-major, outermost first), if present.
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// Reads a tensor and checks its shape against what the config implies.
    pub fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<QTensor> {
        let found = self
            .tensor_shape(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?
            .to_vec();
        if found != expected {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::BadGguf {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })
    }

    /// Reads a tensor if present (for optional weights such as biases).
    pub fn optional_tensor(&mut self, name: &str, expected: &[usize]) -> Result<Option<QTensor>> {
        if self.has_tensor(name) {
            self.tensor(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::MissingMetadata {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    fn bad_metadata(&self, key: &str, reason: impl std::fmt::Display) -> Error {
        Error::BadMetadata {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.value(key)?
            .to_string()
            .cloned()
            .map_err(|e| self.bad_metadata(key, e))
    }

    /// A non-negative integer of any GGUF integer type.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let value = self.value(key)?;
        let n = match value {
            Value::U8(v) => Some(*v as u64),
            Value::U16(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            self.bad_metadata(
                key,
                format!("expected a non-negative integer, found {value:?}"),
            )
        })
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(self.bad_metadata(key, format!("expected a float, found {other:?}"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        self.value(key)?
            .to_bool()
            .map_err(|e| self.bad_metadata(key, e))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.has(key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        if self.has(key) {
            self.f32(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        if self.has(key) {
            self.bool(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An integer key that may also be an array with one value per layer (as some
    /// converters write head counts); returns one value per layer.
    pub fn per_layer_usize(&self, key: &str, n_layers: usize) -> Result<Vec<usize>> {
        match self.value(key)? {
            Value::Array(items) => {
                if items.len() != n_layers {
                    return Err(self.bad_metadata(
                        key,
                        format!(
                            "has {} entries, expected one per layer ({n_layers})",
                            items.len()
                        ),
                    ));
                }
                items
                    .iter()
                    .map(|v| {
                        v.to_u32()
                            .map(|n| n as usize)
                            .map_err(|e| self.bad_metadata(key, e))
                    })
                    .collect()
            }
            _ => Ok(vec![self.usize(key)?; n_layers]),
        }
    }
}

/// Bytes a tensor of shape `dims` takes in `dtype`; `None` if that overflows, as the dims
/// of a corrupt header can (`Shape::elem_count` would panic on them).
pub fn tensor_bytes(dtype: GgmlDType, dims: &[usize]) -> Option<usize> {
    let elems = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    (elems / dtype.block_size()).checked_mul(dtype.type_size())
}

/// Whether the header's last `general.alignment` is an integer 0 (the value candle-core's
/// parser would divide by). Walks the metadata as that parser reads it; where the header
/// breaks off or is malformed it answers false and leaves the error to the parser.
fn declares_zero_alignment(reader: &mut impl Read, file_len: u64) -> bool {
    let mut walk = HeaderWalk {
        reader,
        left: file_len,
        wide: true,
    };
    walk.zero_alignment().unwrap_or(false)
}

/// A cursor over a GGUF header that never reads past the file's end.
struct HeaderWalk<'a, R> {
    reader: &'a mut R,
    left: u64,
    /// Lengths are u64 from GGUF v2 on, u32 in v1.
    wide: bool,
}

impl<R: Read> HeaderWalk<'_, R> {
    fn zero_alignment(&mut self) -> Option<bool> {
        let magic = self.u32()?;
        if magic != 0x4655_4747 && magic != 0x4747_5546 {
            return None;
        }
        self.wide = match self.u32()? {
            1 => false,
            2 | 3 => true,
            _ => return None,
        };
        let _tensor_count = self.length()?;
        let metadata_count = self.length()?;
        let mut zero = false;
        for _ in 0..metadata_count {
            let mut key = self.string()?;
            let value_type = self.u32()?;
            let integer = self.value(value_type, 0)?;
            // The parser drops a key's trailing NULs; a later duplicate replaces an earlier one.
            while key.last() == Some(&0) {
                key.pop();
            }
            if key == b"general.alignment" {
                zero = integer == Some(0);
            }
        }
        Some(zero)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut bytes = [0; N];
        self.skip_into(&mut bytes)?;
        Some(bytes)
    }

    fn skip_into(&mut self, bytes: &mut [u8]) -> Option<()> {
        self.left = self.left.checked_sub(bytes.len() as u64)?;
        self.reader.read_exact(bytes).ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn length(&mut self) -> Option<u64> {
        if self.wide {
            self.take().map(u64::from_le_bytes)
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        self.left = self.left.checked_sub(n)?;
        let copied = std::io::copy(&mut self.reader.by_ref().take(n), &mut std::io::sink()).ok()?;
        (copied == n).then_some(())
    }

    fn string(&mut self) -> Option<Vec<u8>> {
        let len = self.length()?;
        if len > self.left {
            return None;
        }
        let mut bytes = vec![0; len as usize];
        self.skip_into(&mut bytes)?;
        Some(bytes)
    }

    /// Reads past one value of GGUF type `value_type`; the value of the integer types the
    /// parser takes as an alignment (8- to 32-bit) comes back.
    fn value(&mut self, value_type: u32, depth: usize) -> Option<Option<i64>> {
        let integer = match value_type {
            0 => i64::from(self.take::<1>()?[0]),
            1 => i64::from(i8::from_le_bytes(self.take()?)),
            2 => i64::from(u16::from_le_bytes(self.take()?)),
            3 => i64::from(i16::from_le_bytes(self.take()?)),
            4 => i64::from(self.u32()?),
            5 => i64::from(i32::from_le_bytes(self.take()?)),
            8 => {
                let len = self.length()?;
                self.skip(len)?;
                return Some(None);
            }
            9 if depth <= 64 => {
                let element_type = self.u32()?;
                let count = self.length()?;
                match fixed_size(element_type) {
                    Some(size) => self.skip(count.checked_mul(size)?)?,
                    None => {
                        for _ in 0..count {
                            self.value(element_type, depth + 1)?;
                        }
                    }
                }
                return Some(None);
            }
            other => {
                self.skip(fixed_size(other)?)?;
                return Some(None);
            }
        };
        Some(Some(integer))
    }
}

/// Bytes of one value of a fixed-size GGUF type; `None` for strings, arrays and unknown types.
fn fixed_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}
