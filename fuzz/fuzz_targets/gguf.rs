//! `GgufFile::open` on arbitrary bytes, then every metadata getter on every key and every
//! tensor read with its own shape. `open` reads a path, so the bytes go to a scratch file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kernels::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("evokernel-fuzz-{}.gguf", std::process::id()))
    })
}

fuzz_target!(|bytes: &[u8]| {
    let path = scratch();
    std::fs::write(path, bytes).expect("write the scratch file");
    let Ok(mut file) = GgufFile::open(path) else {
        return;
    };
    let keys: Vec<String> = file.content().metadata.keys().cloned().collect();
    for key in &keys {
        let _ = file.string(key);
        let _ = file.usize(key);
        let _ = file.f32(key);
        let _ = file.bool(key);
        let _ = file.per_layer_usize(key, 3);
    }
    let tensors: Vec<(String, Vec<usize>)> = file
        .content()
        .tensor_infos
        .iter()
        .map(|(name, info)| (name.clone(), info.shape.dims().to_vec()))
        .collect();
    for (name, dims) in &tensors {
        let _ = file.tensor(name, dims);
    }
});
