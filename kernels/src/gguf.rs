//! Reading a GGUF file with errors that name the file and the key or tensor at fault.

use std::fs::File;
use std::io::BufReader;
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
        let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
        // A truncated download still has a whole header; catch it here rather than at the
        // first missing tensor, many seconds into loading.
        for (name, info) in &content.tensor_infos {
            let dims = info.shape.dims();
            let bytes = tensor_bytes(info.ggml_dtype, dims)
                .ok_or_else(|| bad(format!("tensor `{name}` has impossible dims {dims:?}")))?;
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
