//! DiffSeg inside a small pipeline: segment every image of a folder in batches
//! and cut each segment out as its own transparent PNG, cropped to its box.
//!
//! ```text
//! cargo run --release --example cut_segments -- examples/images cutouts/ [--weights DIR] [--min-area 0.01]
//! ```
//! Writes `cutouts/<image stem>/segment_<label>.png`.

use std::path::{Path, PathBuf};

use diffseg::{BackendKind, Segmentation, Segmenter};
use image::{DynamicImage, RgbaImage};

/// Images per model pass.
const BATCH: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let input = PathBuf::from(args.first().map_or("examples/images", String::as_str));
    let output = PathBuf::from(args.get(1).map_or("cutouts", String::as_str));
    // Segments smaller than this fraction of the image are left out.
    let min_area: f64 = option("--min-area").map_or(Ok(0.01), |value| value.parse())?;

    let mut builder = Segmenter::builder().backend(BackendKind::Cpu);
    if let Some(weights) = option("--weights") {
        builder = builder.weights(weights);
    }
    let segmenter = builder.build()?;

    let mut paths: Vec<PathBuf> = std::fs::read_dir(&input)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    paths.sort();
    for chunk in paths.chunks(BATCH) {
        // Unreadable images are reported and left out of the batch.
        let mut images = Vec::new();
        let mut names = Vec::new();
        for path in chunk {
            match diffseg::open_image(path) {
                Ok(image) => {
                    images.push(image);
                    names.push(
                        path.file_stem()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
                Err(error) => eprintln!("skipped: {error}"),
            }
        }
        for ((image, name), segmentation) in images
            .iter()
            .zip(&names)
            .zip(segmenter.segment_batch(&images)?)
        {
            let written = cut_out(image, &segmentation, &output.join(name), min_area)?;
            println!(
                "{name}: {written} of {} segments cut out",
                segmentation.segment_count()
            );
        }
    }
    Ok(())
}

/// Writes each large-enough segment of `image` as a PNG cropped to its box,
/// transparent outside the segment. Returns how many were written.
fn cut_out(
    image: &DynamicImage,
    segmentation: &Segmentation,
    folder: &Path,
    min_area: f64,
) -> Result<usize, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(folder)?;
    let rgba = image.to_rgba8();
    let total = (segmentation.width() * segmentation.height()) as f64;
    let mut written = 0;
    for segment in segmentation.segments() {
        if (segment.area as f64) < min_area * total {
            continue;
        }
        let b = segment.bbox;
        let cut = RgbaImage::from_fn(b.width as u32, b.height as u32, |x, y| {
            let (ix, iy) = (b.x + x as usize, b.y + y as usize);
            let mut pixel = *rgba.get_pixel(ix as u32, iy as u32);
            if segmentation.label_at(ix, iy) != segment.label {
                pixel.0[3] = 0;
            }
            pixel
        });
        cut.save(folder.join(format!("segment_{:02}.png", segment.label)))?;
        written += 1;
    }
    Ok(written)
}
