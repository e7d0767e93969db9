use rayon::prelude::*;
use std::time::Instant;
fn main() {
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n { (0..8usize).into_par_iter().for_each(|i| { std::hint::black_box(i); }); }
    println!("outside pool: {:.2} us per par_iter", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    rayon::scope(|_| {
        let t = Instant::now();
        for _ in 0..n { (0..8usize).into_par_iter().for_each(|i| { std::hint::black_box(i); }); }
        println!("inside scope: {:.2} us per par_iter", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    });
    rayon::in_place_scope(|_| {});
    let t = Instant::now();
    rayon::scope(|_| ());
    let _ = t;
    let pool_time = {
        let t = Instant::now();
        rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
            let t = Instant::now();
            for _ in 0..n { (0..8usize).into_par_iter().for_each(|i| { std::hint::black_box(i); }); }
            println!("inside install: {:.2} us per par_iter", t.elapsed().as_secs_f64() * 1e6 / n as f64);
        });
        t.elapsed()
    };
    let _ = pool_time;
}
