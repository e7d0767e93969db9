use std::time::Instant;
use kernels::assets;
use kernels::tokenizer::Tokenizer;
fn main() {
    for a in [assets::SMOLLM2, assets::QWEN_CODER, assets::GEMMA3] {
        let path = a.require().unwrap();
        let t0 = Instant::now();
        let mut f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        let read = t0.elapsed();
        let t0 = Instant::now();
        let _tok = Tokenizer::from_gguf(&c, &path).unwrap();
        println!("{}: read {:?} build {:?}", a.name, read, t0.elapsed());
    }
}
