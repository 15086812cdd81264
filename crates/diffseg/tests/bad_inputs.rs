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
