//! The Rust side of examples/python/binding_overhead.py: seconds per
//! `Segmenter::segment` call on one image, as the binding calls it.
//!
//! cargo run --release -p diffseg-py --example segment_timing -- WEIGHTS IMAGE REPEATS

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [weights, image, repeats] = arguments.as_slice() else {
        return Err("usage: segment_timing WEIGHTS IMAGE REPEATS".into());
    };
    let repeats: usize = repeats.parse()?;
    let segmenter = diffseg::Segmenter::builder()
        .weights(weights)
        .allow_download(false)
        .build()?;
    let image = diffseg::open_image(&image)?;
    // One call first, as the Python side does: first-call allocations are not per image.
    segmenter.segment(&image)?;
    let mut seconds = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        segmenter.segment(&image)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    println!("{seconds:?}");
    Ok(())
}
