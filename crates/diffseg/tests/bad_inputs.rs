//! A corpus of bad and unusual inputs, generated here (plus one committed
//! CMYK JPEG, which no Rust encoder here writes): each must give a typed error
//! or work, never panic. Weights that are truncated, miss keys, have wrong
//! shapes or the wrong layout must give a typed load error naming the file.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use diffseg::{BackendKind, Error, Segmenter};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn gradient(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    }))
}

/// CRC-32 (IEEE) as PNG chunks use it, to forge a valid-looking header.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A 1×1 PNG whose IHDR claims `width`×`height` (with a correct CRC).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = encode(&gradient(1, 1), ImageFormat::Png);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A BMP header claiming `width`×`height`, 24-bit, with no pixel data.
fn bmp_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = encode(&gradient(2, 2), ImageFormat::Bmp);
    bytes[18..22].copy_from_slice(&width.to_le_bytes());
    bytes[22..26].copy_from_slice(&height.to_le_bytes());
    bytes
}

fn write(folder: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn broken_images_give_typed_errors() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let png = encode(&gradient(64, 48), ImageFormat::Png);
    let jpeg = encode(&gradient(64, 48), ImageFormat::Jpeg);
    let mut corrupt_png = png.clone();
    for byte in &mut corrupt_png[60..120] {
        *byte ^= 0x5A;
    }
    let mut corrupt_jpeg = jpeg[..20].to_vec();
    corrupt_jpeg.extend(std::iter::repeat_n(0xA7u8, 400));
    let webp = encode(&gradient(64, 48), ImageFormat::WebP);
    let tiff = encode(&gradient(64, 48), ImageFormat::Tiff);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", Vec::new()),
        ("truncated.png", png[..png.len() / 2].to_vec()),
        // Cut inside the end chunk: every pixel is there, the file is not whole.
        ("truncated-end.png", png[..png.len() - 2].to_vec()),
        ("corrupt.png", corrupt_png),
        ("truncated.jpg", jpeg[..jpeg.len() / 2].to_vec()),
        ("truncated-end.jpg", jpeg[..jpeg.len() - 40].to_vec()),
        ("corrupt.jpg", corrupt_jpeg),
        ("truncated.webp", webp[..webp.len() / 2].to_vec()),
        ("truncated.tiff", tiff[..tiff.len() / 2].to_vec()),
        ("text.png", b"this is not an image".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = write(dir, name, &bytes);
        match diffseg::open_image(&path) {
            Err(
                Error::ImageDecode { path: named, .. }
                | Error::ImageRead { path: named, .. }
                | Error::ImageDamaged { path: named, .. },
            ) => assert_eq!(named, path, "{name}"),
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
    }
    let missing = dir.join("missing.png");
    assert!(matches!(
        diffseg::open_image(&missing),
        Err(Error::ImageRead { .. })
    ));
}

/// The JPEG decoder fills a truncated file's missing part with grey and the PNG
/// decoder stops before the end chunk: those files decode, and must be refused
/// as damaged, unless the caller asks to take them with the damage described.
#[test]
fn damaged_files_that_decode_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let jpeg = encode(&gradient(64, 48), ImageFormat::Jpeg);
    let png = encode(&gradient(64, 48), ImageFormat::Png);
    for (name, bytes, format) in [
        ("half.jpg", &jpeg[..jpeg.len() / 2], "JPEG"),
        ("no-end.png", &png[..png.len() - 4], "PNG"),
    ] {
        let path = write(dir, name, bytes);
        let (image, damage) = diffseg::open_image_allowing_damage(&path).unwrap();
        assert_eq!((image.width(), image.height()), (64, 48), "{name}");
        let damage = damage.unwrap_or_else(|| panic!("{name}: no damage found"));
        assert!(damage.contains(format), "{name}: {damage}");
        match diffseg::open_image(&path) {
            Err(Error::ImageDamaged {
                path: named,
                reason,
            }) => {
                assert_eq!(named, path);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{name}: expected ImageDamaged, got {other:?}"),
        }
    }
    // The whole files are not damaged.
    for (name, bytes) in [("whole.jpg", &jpeg), ("whole.png", &png)] {
        let path = write(dir, name, bytes);
        let (_, damage) = diffseg::open_image_allowing_damage(&path).unwrap();
        assert_eq!(damage, None, "{name}");
    }
}

#[test]
fn huge_headers_hit_the_decoding_limits() {
    let folder = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("huge.png", png_claiming(30_000, 30_000)),
        ("huge.bmp", bmp_claiming(30_000, 30_000)),
    ] {
        let path = write(folder.path(), name, &bytes);
        match diffseg::open_image(&path) {
            Err(Error::ImageTooLarge {
                path: named,
                reason,
            }) => {
                assert_eq!(named, path);
                assert!(reason.contains("16384"), "{reason}");
            }
            other => panic!("{name}: expected ImageTooLarge, got {other:?}"),
        }
    }
}

#[test]
fn unusual_images_decode_and_segment() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let sixteen_bit = DynamicImage::ImageRgb16(ImageBuffer::from_fn(40, 30, |x, y| {
        Rgb([(x * 1500) as u16, (y * 2000) as u16, 30_000])
    }));
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_fn(30, 50, |x, y| {
        Luma([(x * 4 + y * 2) as u8])
    }));
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(33, 33, |x, y| {
        Rgba([(x * 7) as u8, 100, (y * 7) as u8, (x * 3) as u8])
    }));
    let files = [
        write(dir, "16bit.png", &encode(&sixteen_bit, ImageFormat::Png)),
        write(dir, "grey.png", &encode(&grey, ImageFormat::Png)),
        write(dir, "rgba.png", &encode(&rgba, ImageFormat::Png)),
        write(dir, "one.png", &encode(&gradient(1, 1), ImageFormat::Png)),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cmyk.jpg"
        )),
    ];
    let segmenter = Segmenter::builder()
        .backend(BackendKind::Cpu)
        .weights(tiny_weights())
        .allow_download(false)
        .build()
        .unwrap();
    for path in files {
        let image = diffseg::open_image(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let segmentation = segmenter.segment(&image).unwrap();
        assert_eq!(
            (segmentation.width(), segmentation.height()),
            (image.width() as usize, image.height() as usize),
            "{}",
            path.display()
        );
    }
    // CMYK: converted to RGB (tools/reference/make_cmyk_jpeg.py: the top-left
    // pixel is C=M=Y=K=0, white; PIL agrees).
    let cmyk = diffseg::open_image(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cmyk.jpg"
    )))
    .unwrap();
    let pixel = cmyk.to_rgb8().get_pixel(0, 0).0;
    assert!(pixel.iter().all(|&channel| channel >= 245), "{pixel:?}");
}

/// A copy of the tiny diffusers folder that a test may damage.
fn tiny_copy(folder: &Path) -> PathBuf {
    let root = folder.join("tiny");
    for component in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(root.join(component)).unwrap();
        for entry in std::fs::read_dir(tiny_weights().join(component)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), root.join(component).join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(
        tiny_weights().join("model_index.json"),
        root.join("model_index.json"),
    )
    .unwrap();
    root
}

/// Rewrites a safetensors file through `edit`, which gets `(name, dtype, shape, bytes)` entries.
fn rewrite_safetensors(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load_error(weights: &Path) -> (PathBuf, String) {
    match Segmenter::builder()
        .weights(weights)
        .allow_download(false)
        .build()
    {
        Err(Error::Load { path, error }) => (path, error.to_string()),
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("damaged weights {} loaded", weights.display()),
    }
}

#[test]
fn damaged_weights_give_typed_errors() {
    let folder = tempfile::tempdir().unwrap();

    // Truncated UNet file.
    let root = tiny_copy(&folder.path().join("truncated"));
    let unet = root.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    let (_, message) = load_error(&root);
    assert!(
        message.contains("diffusion_pytorch_model.safetensors"),
        "{message}"
    );

    // A VAE tensor missing.
    let root = tiny_copy(&folder.path().join("missing"));
    let vae = root.join("vae/diffusion_pytorch_model.safetensors");
    rewrite_safetensors(&vae, |tensors| {
        tensors.retain(|(name, ..)| name != "encoder.conv_in.weight")
    });
    let (_, message) = load_error(&root);
    assert!(message.contains("encoder.conv_in.weight"), "{message}");

    // A text-encoder tensor with the wrong shape.
    let root = tiny_copy(&folder.path().join("shape"));
    let clip = root.join("text_encoder/model.safetensors");
    rewrite_safetensors(&clip, |tensors| {
        let entry = tensors
            .iter_mut()
            .find(|(name, ..)| name.ends_with("final_layer_norm.weight"))
            .unwrap();
        entry.2 = vec![entry.2[0] / 2];
        entry.3.truncate(entry.3.len() / 2);
    });
    let (_, message) = load_error(&root);
    assert!(message.contains("final_layer_norm.weight"), "{message}");

    // The wrong layout: an LDM single-file checkpoint where the diffusers UNet
    // file should be, and a diffusers component file given as a checkpoint.
    let root = tiny_copy(&folder.path().join("layout"));
    std::fs::copy(
        tiny_weights().join("tiny-ldm.safetensors"),
        root.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    load_error(&root);
    let (path, _) = load_error(&tiny_weights().join("unet/diffusion_pytorch_model.safetensors"));
    assert!(path.ends_with("unet/diffusion_pytorch_model.safetensors"));
}

#[test]
fn a_single_file_of_unknown_architecture_is_refused() {
    // The tiny model in the LDM single-file layout: single files carry no
    // config, so the loader only accepts SD 1.x shapes and must refuse this
    // one with a typed error naming the file.
    let file = tiny_weights().join("tiny-ldm.safetensors");
    let (path, _) = load_error(&file);
    assert_eq!(path, file);
}

/// Issue 19: a header within the 16384-pixel sides but over the pixel limit is
/// refused before decoding, naming the file, its size and the limit; the limit
/// can be raised.
#[test]
fn images_over_the_pixel_limit_are_refused_from_their_header() {
    let folder = tempfile::tempdir().unwrap();
    // 10000×10000 = 100 megapixels: over the default 64, each side under 16384.
    let path = write(folder.path(), "big.png", &png_claiming(10_000, 10_000));
    match diffseg::open_image(&path) {
        Err(Error::ImageTooLarge {
            path: named,
            reason,
        }) => {
            assert_eq!(named, path);
            assert!(reason.contains("10000×10000"), "{reason}");
            assert!(
                reason.contains(&diffseg::DEFAULT_MAX_PIXELS.to_string()),
                "{reason}"
            );
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    // Raised: the size passes, and the file fails for what it is (one pixel of data).
    let raised = diffseg::ImageLimits::default().with_max_pixels(100_000_000);
    match raised.open(&path) {
        Err(Error::ImageDecode { path: named, .. }) => assert_eq!(named, path),
        other => panic!("expected ImageDecode, got {other:?}"),
    }
    // Lowered below a real image.
    let small = write(
        folder.path(),
        "small.png",
        &encode(&gradient(40, 30), ImageFormat::Png),
    );
    let lowered = diffseg::ImageLimits::default().with_max_pixels(1_000);
    assert!(matches!(
        lowered.open(&small),
        Err(Error::ImageTooLarge { .. })
    ));
    assert!(diffseg::ImageLimits::default()
        .with_max_pixels(1_200)
        .open(&small)
        .is_ok());
}

fn tiny_segmenter(builder: diffseg::SegmenterBuilder) -> Segmenter {
    builder
        .backend(BackendKind::Cpu)
        .weights(tiny_weights())
        .allow_download(false)
        .build()
        .unwrap()
}

/// Issue 19: the segmenter holds images in memory to its pixel limit too, before any work.
#[test]
fn the_segmenter_refuses_images_over_its_pixel_limit() {
    let segmenter = tiny_segmenter(Segmenter::builder().max_pixels(1_000));
    assert_eq!(segmenter.image_limits().max_pixels(), 1_000);
    match segmenter.segment(&gradient(40, 30)) {
        Err(Error::TooManyPixels {
            width: 40,
            height: 30,
            max_pixels: 1_000,
        }) => {}
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
    assert!(matches!(
        segmenter.attention(&gradient(40, 30)),
        Err(Error::TooManyPixels { .. })
    ));
    assert!(segmenter.segment(&gradient(40, 25)).is_ok());
}

/// Issue 19: a 16384×1 image costs what the model's input costs (the bench
/// `peak_memory` measures it); here it must segment to its own size.
#[test]
fn one_pixel_thin_images_segment_at_their_size() {
    let segmenter = tiny_segmenter(Segmenter::builder());
    for (width, height) in [(16_384, 1), (1, 16_384)] {
        let segmentation = segmenter.segment(&gradient(width, height)).unwrap();
        assert_eq!(
            (segmentation.width(), segmentation.height()),
            (width as usize, height as usize)
        );
    }
}

/// A safetensors file from its raw parts: `tensors` as (name, dtype, shape,
/// bytes), laid out one after another, and string metadata.
fn raw_safetensors(
    tensors: &[(&str, &str, Vec<u64>, Vec<u8>)],
    metadata: &[(&str, &str)],
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(bytes);
    }
    if !metadata.is_empty() {
        let metadata: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(key, value)| (key.to_string(), serde_json::Value::from(*value)))
            .collect();
        header.insert("__metadata__".into(), metadata.into());
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    file
}

/// One f32 value 1.0: a 1-cell grid's map.
fn one_cell() -> Vec<u8> {
    1f32.to_le_bytes().to_vec()
}

/// The placement metadata of a `width`×`height` image padded to a square.
fn placement_metadata(width: &str, height: &str, side: &str) -> Vec<(&'static str, String)> {
    vec![
        ("image_width", width.to_string()),
        ("image_height", height.to_string()),
        ("top", "0".to_string()),
        ("left", "0".to_string()),
        ("side", side.to_string()),
    ]
}

fn load_attention(
    folder: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<diffseg::SelfAttention, Error> {
    let path = write(folder, name, bytes);
    diffseg::SelfAttention::load_safetensors(&path)
}

/// Issue 19: saved attention whose placement said 100000×100000 aborted on the
/// label map's allocation; now every size in the file is bounded first.
#[test]
fn saved_attention_with_a_huge_placement_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let cases = [
        (
            "huge",
            placement_metadata("100000", "100000", "100000"),
            "pixels",
        ),
        (
            "negative",
            placement_metadata("-5", "10", "10"),
            "image_width",
        ),
        (
            "too-wide",
            placement_metadata("99999999999", "1", "1"),
            "image_width",
        ),
        (
            "square-larger",
            placement_metadata("10", "10", "11"),
            "larger",
        ),
        ("empty", placement_metadata("0", "10", "10"), "empty"),
    ];
    for (name, metadata, expected) in cases {
        let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let bytes = raw_safetensors(&[("self_attn.1", "F32", vec![1, 1], one_cell())], &metadata);
        match load_attention(folder.path(), name, &bytes) {
            Err(Error::Attention { reason, .. }) => {
                assert!(reason.contains(expected), "{name}: {reason}")
            }
            other => panic!("{name}: expected an attention error, got {other:?}"),
        }
    }
    // An offset far off the image.
    let mut metadata = placement_metadata("10", "10", "10");
    metadata[2].1 = i64::MIN.to_string();
    let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bytes = raw_safetensors(&[("self_attn.1", "F32", vec![1, 1], one_cell())], &metadata);
    assert!(matches!(
        load_attention(folder.path(), "offset", &bytes),
        Err(Error::Attention { .. })
    ));
    // Raised limits take the large image.
    let metadata = placement_metadata("10000", "10000", "10000");
    let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bytes = raw_safetensors(&[("self_attn.1", "F32", vec![1, 1], one_cell())], &metadata);
    let path = write(folder.path(), "raised", &bytes);
    assert!(diffseg::SelfAttention::load_safetensors(&path).is_err());
    let limits = diffseg::ImageLimits::default().with_max_pixels(100_000_000);
    let attention = diffseg::SelfAttention::load_safetensors_with_limits(&path, &limits).unwrap();
    assert_eq!(attention.placement.unwrap().image_width, 10_000);
}

/// Issue 19: a grid name whose h·w overflows (3 × the inverse of 3 modulo 2⁶⁴ is 1)
/// matched a [1, 1] tensor and panicked in Burn's reshape; grids too large to hold
/// are refused by name.
#[test]
fn saved_attention_with_overflowing_grid_names_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    for name in [
        "self_attn.3x12297829382473034411",
        "self_attn.4294967296",
        "self_attn.129x128",
        "self_attn.18446744073709551615x2",
    ] {
        let bytes = raw_safetensors(&[(name, "F32", vec![1, 1], one_cell())], &[]);
        match load_attention(folder.path(), "overflow.safetensors", &bytes) {
            Err(Error::Attention { reason, .. }) => {
                assert!(reason.contains(name), "{name}: {reason}")
            }
            other => panic!("{name}: expected an attention error, got {other:?}"),
        }
    }
    // The same tensor under a plain name reads.
    let bytes = raw_safetensors(&[("self_attn.1", "F32", vec![1, 1], one_cell())], &[]);
    let attention = load_attention(folder.path(), "one.safetensors", &bytes).unwrap();
    assert_eq!((attention.maps[0].height, attention.maps[0].width), (1, 1));
}

/// Hand-built attention is held to the same bounds before any tensor is made.
#[test]
fn hand_built_attention_with_overflowing_sizes_is_refused() {
    let attention = diffseg::SelfAttention {
        maps: vec![diffseg::SelfAttentionMap {
            height: 3,
            width: 12_297_829_382_473_034_411,
            probs: vec![1.0],
        }],
        placement: None,
    };
    assert!(attention.check().is_err());
    assert!(attention
        .merge(&diffseg::MergeOptions::default(), BackendKind::Cpu)
        .is_err());
    let attention = diffseg::SelfAttention {
        maps: vec![diffseg::SelfAttentionMap {
            height: 1,
            width: 1,
            probs: vec![1.0],
        }],
        placement: Some(diffseg::Placement {
            image_width: 10,
            image_height: 10,
            top: i64::MIN,
            left: 0,
            side: 10,
        }),
    };
    assert!(attention
        .merge(&diffseg::MergeOptions::default(), BackendKind::Cpu)
        .is_err());
}

mod readers {
    //! Property tests of the readers of outside bytes this crate owns: images and
    //! saved attention. Whatever the bytes, a typed error or a value, never a panic
    //! (an abort on a huge allocation ends the test binary: also a failure).

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Few cases: each writes a file and decodes it; they run in a few seconds.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 96,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Opens `bytes` as an image file: a value or one of the image errors.
    fn open(bytes: &[u8]) -> Result<(), TestCaseError> {
        let folder = tempfile::tempdir().unwrap();
        let path = write(folder.path(), "case", bytes);
        match diffseg::open_image_allowing_damage(&path) {
            Ok((image, _)) => {
                prop_assert!(image.width() > 0 && image.height() > 0);
                prop_assert!(
                    image.width() as u64 * image.height() as u64 <= diffseg::DEFAULT_MAX_PIXELS
                );
            }
            Err(
                Error::ImageDecode { path: named, .. }
                | Error::ImageRead { path: named, .. }
                | Error::ImageDamaged { path: named, .. }
                | Error::ImageTooLarge { path: named, .. },
            ) => prop_assert_eq!(named, path),
            Err(Error::EmptyImage) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
        Ok(())
    }

    /// The openings of each format `image` guesses from, so random bytes reach the decoders.
    const MAGIC: [&[u8]; 6] = [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"II*\x00",
        b"BM",
    ];

    /// `bytes` with `edits` (position, new value) applied and then cut at `cut`.
    fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8)], cut: Option<Index>) -> Vec<u8> {
        for (position, value) in edits {
            let position = position.index(bytes.len());
            bytes[position] = *value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic_the_image_reader(
            magic in 0..MAGIC.len(),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = MAGIC[magic].to_vec();
            bytes.extend(tail);
            open(&bytes)?;
        }

        #[test]
        fn mutated_png_and_jpeg_never_panic_the_image_reader(
            jpeg in any::<bool>(),
            edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<Index>()),
        ) {
            let format = if jpeg { ImageFormat::Jpeg } else { ImageFormat::Png };
            let bytes = encode(&gradient(24, 16), format);
            open(&mutate(bytes, &edits, cut))?;
        }
    }

    /// Loads `bytes` as saved attention: a checked value or an attention error.
    fn load(bytes: &[u8]) -> Result<(), TestCaseError> {
        let folder = tempfile::tempdir().unwrap();
        let path = write(folder.path(), "case.safetensors", bytes);
        match diffseg::SelfAttention::load_safetensors(&path) {
            Ok(attention) => {
                prop_assert!(attention.check().is_ok(), "{:?}", attention.check());
                if let Some(placement) = attention.placement {
                    let pixels = placement.image_width as u64 * placement.image_height as u64;
                    prop_assert!(pixels <= diffseg::DEFAULT_MAX_PIXELS);
                }
            }
            Err(Error::Attention { path: named, .. }) => prop_assert_eq!(named, path),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
        Ok(())
    }

    /// A valid saved file: uniform 2×2 and 1×2 maps and a placement.
    fn valid_attention() -> Vec<u8> {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("valid.safetensors");
        let uniform = |height: usize, width: usize| {
            let cells = height * width;
            diffseg::SelfAttentionMap {
                height,
                width,
                probs: vec![1.0 / cells as f32; cells * cells],
            }
        };
        diffseg::SelfAttention {
            maps: vec![uniform(2, 2), uniform(1, 2)],
            placement: Some(diffseg::Placement::new(40, 30, diffseg::Fit::Pad)),
        }
        .save_safetensors(&path)
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// A grid name: plain, small, huge or overflowing sides.
    fn grid_name() -> impl Strategy<Value = String> {
        let side = prop_oneof![0u64..5, any::<u64>(), Just(12_297_829_382_473_034_411u64)];
        prop_oneof![
            side.clone().prop_map(|side| format!("self_attn.{side}")),
            (side.clone(), side).prop_map(|(h, w)| format!("self_attn.{h}x{w}")),
            Just("other".to_string()),
        ]
    }

    /// A metadata value: a small or any integer, or not one.
    fn metadata_value() -> impl Strategy<Value = String> {
        prop_oneof![
            (-50i64..50).prop_map(|v| v.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            Just("x".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic_the_attention_reader(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            load(&bytes)?;
        }

        #[test]
        fn mutated_attention_files_never_panic_the_reader(
            edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<Index>()),
        ) {
            load(&mutate(valid_attention(), &edits, cut))?;
        }

        #[test]
        fn crafted_attention_headers_never_panic_the_reader(
            tensors in proptest::collection::vec(
                (
                    grid_name(),
                    prop::sample::select(vec!["F32", "F16", "BF16", "I32"]),
                    proptest::collection::vec(0u64..5, 0..4),
                    proptest::collection::vec(any::<u8>(), 0..64),
                ),
                1..4,
            ),
            metadata in proptest::collection::vec(metadata_value(), 5),
        ) {
            // Each tensor's data is its shape's size where that is small (so the
            // header is consistent and the reader gets past safetensors' checks).
            let tensors: Vec<(String, &str, Vec<u64>, Vec<u8>)> = tensors
                .into_iter()
                .map(|(name, dtype, shape, mut data)| {
                    let width = if dtype == "F32" || dtype == "I32" { 4 } else { 2 };
                    let size = shape.iter().product::<u64>() as usize * width;
                    data.resize(size, 0x3c);
                    (name, dtype, shape, data)
                })
                .collect();
            let tensors: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = tensors
                .iter()
                .map(|(name, dtype, shape, data)| (name.as_str(), *dtype, shape.clone(), data.clone()))
                .collect();
            let keys = ["image_width", "image_height", "top", "left", "side"];
            let metadata: Vec<(&str, &str)> =
                keys.iter().zip(&metadata).map(|(key, value)| (*key, value.as_str())).collect();
            load(&raw_safetensors(&tensors, &metadata))?;
        }
    }
}

/// A zero cap on concurrent runs is refused before the weights are looked up
/// (so before any download), not after.
#[test]
fn a_zero_run_cap_is_refused_before_the_weights_are_looked_up() {
    let error = Segmenter::builder()
        .weights("/nonexistent/diffseg-weights")
        .max_concurrent_runs(0)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("max_concurrent_runs"), "{error}");
}
