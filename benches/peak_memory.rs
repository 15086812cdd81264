//! Peak heap memory of segmenting very long, thin images on the tiny test model
//! (`crates/diffseg-sd/tests/fixtures/tiny`, model input 128 px): a 16384×1 and a
//! 1×16384 image. What an image costs must be bounded by the model's input, not by
//! the side of the square the image is fitted into (16384² here).
//!
//! A counting global allocator records the most heap bytes live at once during one
//! `Segmenter::segment` call (above what was live before it). Peak memory is not a
//! time, so it is printed (`peak heap ...` lines) rather than measured by criterion;
//! criterion times the same calls.
//!
//! `cargo bench --bench peak_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use diffseg::{BackendKind, Segmenter};
use image::{DynamicImage, ImageBuffer, Rgb};

/// The system allocator, counting the bytes live and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grow(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grow(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts `bytes` more live, raising the peak if needed.
fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// The most heap bytes live at once while `work` ran, above those live before it.
fn peak_heap_of<R>(work: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let output = work();
    (output, PEAK.load(Ordering::Relaxed) - before)
}

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/diffseg-sd/tests/fixtures/tiny"
    ))
}

/// A `width`×`height` colour ramp.
fn ramp(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    }))
}

fn peak_memory(c: &mut Criterion) {
    let segmenter = Segmenter::builder()
        .backend(BackendKind::Cpu)
        .weights(tiny_weights())
        .allow_download(false)
        .build()
        .expect("the tiny model loads");
    let cases = [("16384x1", ramp(16_384, 1)), ("1x16384", ramp(1, 16_384))];
    for (name, image) in &cases {
        let (result, peak) = peak_heap_of(|| segmenter.segment(image));
        let segmentation = result.expect("the image segments");
        println!(
            "peak heap segmenting {name} on the tiny model: {:.1} MiB ({} segments)",
            peak as f64 / (1 << 20) as f64,
            segmentation.segment_count()
        );
    }
    let mut group = c.benchmark_group("segment_thin_image_tiny_model");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (name, image) in &cases {
        group.bench_function(*name, |b| b.iter(|| segmenter.segment(image).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, peak_memory);
criterion_main!(benches);
