//! Segment one image with the library: the whole job in a dozen lines.
//!
//! ```text
//! cargo run --release --example segment_image -- examples/images/astronaut.png
//! ```
//! Weights: `$DIFFSEG_WEIGHTS`, the Hugging Face cache, or a download of SD 1.5.

use diffseg::{BackendKind, Segmenter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/images/astronaut.png".into());
    let image = diffseg::open_image(&path)?;
    let segmenter = Segmenter::new(BackendKind::Cpu)?;
    let segmentation = segmenter.segment(&image)?;
    println!(
        "{} segments in {}×{}",
        segmentation.segment_count(),
        segmentation.width(),
        segmentation.height()
    );
    for segment in segmentation.segments() {
        println!(
            "  segment {:>2}: {:>7} pixels, box {:?}",
            segment.label, segment.area, segment.bbox
        );
    }
    segmentation.save_label_png("labels.png")?;
    segmentation.save_overlay(&image, "overlay.png")?;
    Ok(())
}
