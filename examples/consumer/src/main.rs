//! Segments one image with the `diffseg` library and prints the number of segments.
//!
//! ```text
//! diffseg-consumer WEIGHTS IMAGE [cpu|wgpu]
//! ```
//! WEIGHTS: a Stable Diffusion 1.x folder (diffusers layout) or checkpoint file.
//! The backend is the CPU unless `wgpu` is asked for, which needs the `wgpu` feature:
//! CI builds it with default features and runs it on the CPU; WGPU needs a Vulkan driver.

use std::process::ExitCode;

use diffseg::{BackendKind, Segmenter};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (weights, image, backend) = match args.as_slice() {
        [weights, image] => (weights, image, BackendKind::Cpu),
        [weights, image, backend] if backend == "cpu" => (weights, image, BackendKind::Cpu),
        [weights, image, backend] if backend == "wgpu" && cfg!(feature = "wgpu") => {
            (weights, image, BackendKind::Wgpu)
        }
        _ => {
            eprintln!("usage: diffseg-consumer WEIGHTS IMAGE [cpu|wgpu]  (wgpu needs the `wgpu` feature)");
            return ExitCode::from(2);
        }
    };
    match segment_count(weights, image, backend) {
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

fn segment_count(weights: &str, image: &str, backend: BackendKind) -> Result<usize, diffseg::Error> {
    let segmenter = Segmenter::builder()
        .backend(backend)
        .weights(weights)
        .allow_download(false)
        .build()?;
    let image = diffseg::open_image(&image)?;
    Ok(segmenter.segment(&image)?.segment_count())
}
