use std::time::Instant;
use kernels::{Logits, Model};
fn decode(model: &Model, n: usize) -> f64 {
    let mut cache = model.new_cache();
    model.forward(&mut cache, &[1, 2, 3, 4, 5, 6, 7, 8], Logits::Last).unwrap();
    let t = Instant::now();
    for i in 0..n { model.forward(&mut cache, &[(100 + i) as u32], Logits::Last).unwrap(); }
    n as f64 / t.elapsed().as_secs_f64()
}
fn main() {
    let path = std::path::Path::new("assets/models/smollm2-135m-instruct-q4_1.gguf");
    let model = Model::load(path).unwrap();
    for _ in 0..2 {
        println!("outside the pool: {:.1} tok/s", decode(&model, 128));
        let inside = rayon::scope(|_| decode(&model, 128));
        println!("inside the pool:  {:.1} tok/s", inside);
    }
}
