//! Segments one image with the `diffseg` library and prints the number of segments.
//!
//! ```text
//! diffseg-consumer WEIGHTS IMAGE
//! ```
//! WEIGHTS: a Stable Diffusion 1.x folder (diffusers layout) or checkpoint file.
//! Built with the `wgpu` feature it runs on WGPU, otherwise on the CPU.

use std::process::ExitCode;

use diffseg::{BackendKind, Segmenter};

const BACKEND: BackendKind = if cfg!(feature = "wgpu") {
    BackendKind::Wgpu
} else {
    BackendKind::Cpu
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, image] = args.as_slice() else {
        eprintln!("usage: diffseg-consumer WEIGHTS IMAGE");
        return ExitCode::from(2);
    };
    match segment_count(weights, image) {
        Ok(count) => {
            println!("segments: {count}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn segment_count(weights: &str, image: &str) -> Result<usize, diffseg::Error> {
    let segmenter = Segmenter::builder()
        .backend(BACKEND)
        .weights(weights)
        .allow_download(false)
        .build()?;
    let image = diffseg::open_image(&image)?;
    Ok(segmenter.segment(&image)?.segment_count())
}
