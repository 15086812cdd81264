//! `diffseg view DIR`: a gallery of the results in DIR (`diffseg segment --out
//! DIR`), written as one self-contained `DIR/index.html` that opens from
//! `file://`: no server, no network, nothing fetched but the result files
//! themselves, by relative links.
//!
//! One `<figure data-image="NAME" data-segments="N">` per result (NAME.json
//! with NAME.png and/or NAME.overlay.png beside it): the overlay (over the
//! original photo, with an opacity slider, when `--images` finds it), a legend
//! with each segment's colour, number, name and area, links to the files, and
//! on hover the segment under the cursor. Browsers refuse to read the pixels of
//! a `file://` image from a script, so each figure carries its own small copy
//! of the label map (at most [`HOVER_MAP_SIDE`] pixels a side, as a `data:`
//! PNG). Figures are paged in the page's script and images load lazily, so a
//! folder of 10,000 results opens as fast as one page of them.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use image::ImageEncoder as _;
use serde::Deserialize;
use walkdir::WalkDir;

use crate::exit::{self, Exit};

/// The longest side of the label map a figure carries for hovering.
const HOVER_MAP_SIDE: u32 = 128;

/// What marks an `index.html` as written by `diffseg view`: the only kind it
/// replaces.
const GENERATOR_MARK: &str = r#"<meta name="generator" content="diffseg view"#;

/// Photo formats every browser shows (TIFF is not one).
const BROWSER_IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// Write `DIR/index.html`, a gallery of the segmentation results in DIR.
///
/// Every `NAME.json` that `diffseg segment` wrote in DIR or below it, with its
/// label PNG (`NAME.png`) and overlay (`NAME.overlay.png`), becomes one figure.
/// The page needs no server and no network: open it from the file manager or
/// with `xdg-open DIR/index.html`. An `index.html` that `diffseg view` did not
/// write is never replaced.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg segment photos/ --out results/
  diffseg view results/                       # then open results/index.html
  diffseg view results/ --images photos/      # the photos under the overlays
  diffseg view results/ --page-size 200")]
pub struct Args {
    /// The folder of results to show (the `--out` of `diffseg segment`),
    /// searched recursively; the gallery is written as DIR/index.html.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The folder the images were segmented from (the input folder of
    /// `diffseg segment`), to show each original photo under its overlay with
    /// an opacity slider. Without it the overlays are shown alone (unless the
    /// photos lie beside their results).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Results per page.
    #[arg(long, default_value_t = 50, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub page_size: u32,
}

/// The parts of a result JSON the gallery shows. Read leniently (other
/// fields, the masks among them, are ignored) so that it follows the format.
#[derive(Deserialize)]
struct ResultJson {
    #[serde(default)]
    image: Option<String>,
    width: u32,
    height: u32,
    segments: Vec<SegmentJson>,
}

#[derive(Deserialize)]
struct SegmentJson {
    label: u32,
    area: u64,
    #[serde(default)]
    name: Option<String>,
}

/// One result as the gallery shows it; paths are URLs relative to DIR.
struct Figure {
    name: String,
    json: String,
    labels: Option<String>,
    overlay: Option<String>,
    photo: Option<String>,
    width: u32,
    height: u32,
    segments: Vec<SegmentJson>,
    hover_map: Option<HoverMap>,
}

/// A figure's label map, shrunk, as a `data:` PNG: 8-bit grey (value = label)
/// when every label fits a byte, else RGB (red = the label's low byte, green
/// the next, blue the next).
struct HoverMap {
    data_url: String,
    width: u32,
    height: u32,
    grey: bool,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let dir = &args.dir;
    if !dir.is_dir() {
        return Err(exit::usage(format!("{}: not a folder", dir.display())));
    }
    let index = dir.join("index.html");
    // Before any work: never over a page diffseg did not write.
    diffseg::refuse_foreign(&index, "a gallery", is_our_gallery)?;
    let dir_real = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve the folder", dir.display()))?;
    let images_real =
        match &args.images {
            Some(images) => Some(images.canonicalize().map_err(|_| {
                exit::usage(format!("--images {}: no such folder", images.display()))
            })?),
            None => None,
        };
    let (figures, notes) = collect_figures(&dir_real, images_real.as_deref())?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    if figures.is_empty() {
        return Err(exit::input_failed(anyhow::anyhow!(
            "{}: no results of `diffseg segment` (NAME.json with NAME.png or NAME.overlay.png)",
            dir.display()
        )));
    }
    let title = dir_real
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir_real.display().to_string());
    let html = gallery_html(&title, &figures, args.page_size);
    diffseg::write_atomically(&index, html.as_bytes())?;
    let with_photos = figures
        .iter()
        .filter(|figure| figure.photo.is_some())
        .count();
    println!(
        "wrote {}: {} results ({with_photos} with their photos)",
        index.display(),
        figures.len()
    );
    Ok(Exit::Done)
}

/// Whether `path` is a page `diffseg view` wrote (its head carries the mark).
fn is_our_gallery(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(4096).read_to_end(&mut head))
        .is_ok_and(|_| String::from_utf8_lossy(&head).contains(GENERATOR_MARK))
}

/// The results under `dir` (canonical), sorted by name, and notes on what
/// could not be shown in full.
fn collect_figures(
    dir: &Path,
    images: Option<&Path>,
) -> anyhow::Result<(Vec<Figure>, Vec<String>)> {
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let mut other_json = 0usize;
    let walker = WalkDir::new(dir).sort_by_file_name().into_iter();
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot read the folder {}", dir.display()))?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy();
        // Hidden files include the temporaries of an interrupted write.
        if !entry.file_type().is_file()
            || file_name.starts_with('.')
            || !file_name.ends_with(".json")
        {
            continue;
        }
        let Ok(result) = std::fs::read(path)
            .map_err(|_| ())
            .and_then(|bytes| serde_json::from_slice::<ResultJson>(&bytes).map_err(|_| ()))
        else {
            other_json += 1;
            continue;
        };
        let relative = path.strip_prefix(dir).unwrap_or(path);
        let base = relative.with_extension("");
        let sibling = |suffix: &str| {
            let mut name = base.as_os_str().to_owned();
            name.push(suffix);
            Some(PathBuf::from(name)).filter(|file| dir.join(file).is_file())
        };
        let (labels, overlay) = (sibling(".png"), sibling(".overlay.png"));
        if labels.is_none() && overlay.is_none() {
            notes.push(format!(
                "{}: neither {} nor its overlay is there; left out",
                relative.display(),
                base.with_extension("png").display()
            ));
            continue;
        }
        let hover_map = match &labels {
            Some(labels) => match hover_map(&dir.join(labels), result.width, result.height) {
                Ok(map) => Some(map),
                Err(reason) => {
                    notes.push(format!(
                        "{}: {reason}; no hovering over it",
                        labels.display()
                    ));
                    None
                }
            },
            None => None,
        };
        let photo = result
            .image
            .as_deref()
            .and_then(|image| find_photo(dir, images, relative, image));
        figures.push(Figure {
            name: url_path(&base),
            json: url_path(relative),
            labels: labels.as_deref().map(url_path),
            overlay: overlay.as_deref().map(url_path),
            photo,
            width: result.width,
            height: result.height,
            segments: result.segments,
            hover_map,
        });
    }
    if other_json > 0 {
        notes.push(format!(
            "{other_json} JSON files are not segmentation results (summaries, timings, ...); left out"
        ));
    }
    Ok((figures, notes))
}

/// The label PNG at `path`, checked against the size its JSON records,
/// shrunk to at most [`HOVER_MAP_SIDE`] a side (nearest label) and encoded as
/// a `data:` PNG.
fn hover_map(path: &Path, width: u32, height: u32) -> Result<HoverMap, String> {
    let (labels, found_width, found_height) =
        diffseg::read_label_png(path).map_err(|error| error.to_string())?;
    if (found_width, found_height) != (width, height) {
        return Err(format!(
            "{found_width}×{found_height}, its JSON says {width}×{height}"
        ));
    }
    let scale = |side: u32| {
        let longest = width.max(height).max(1) as u64;
        ((side as u64 * HOVER_MAP_SIDE as u64).div_ceil(longest)).clamp(1, side as u64) as u32
    };
    let (small_width, small_height) = if width.max(height) <= HOVER_MAP_SIDE {
        (width, height)
    } else {
        (scale(width), scale(height))
    };
    let grey = labels.iter().all(|&label| label <= u8::MAX as u32);
    let bytes_per_label = if grey { 1 } else { 3 };
    let mut pixels =
        Vec::with_capacity(small_width as usize * small_height as usize * bytes_per_label);
    for y in 0..small_height as u64 {
        // The label at the centre of each small pixel's area.
        let source_y = ((2 * y + 1) * height as u64 / (2 * small_height as u64)) as usize;
        for x in 0..small_width as u64 {
            let source_x = ((2 * x + 1) * width as u64 / (2 * small_width as u64)) as usize;
            let label = labels[source_y * width as usize + source_x];
            pixels.extend_from_slice(&label.to_le_bytes()[..bytes_per_label]);
        }
    }
    let colour = if grey {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(&pixels, small_width, small_height, colour)
    .map_err(|error| format!("cannot encode its hover map: {error}"))?;
    Ok(HoverMap {
        data_url: format!("data:image/png;base64,{}", base64(&png)),
        width: small_width,
        height: small_height,
        grey,
    })
}

/// The original photo of the result `relative` (its JSON names the image
/// file `image`), as a URL relative to `dir`: in `images` at the result's
/// place, else beside the result (a file diffseg did not write). Only formats
/// browsers show.
fn find_photo(dir: &Path, images: Option<&Path>, relative: &Path, image: &str) -> Option<String> {
    // The JSON records a file name; anything more is not followed.
    let file_name = Path::new(image).file_name()?;
    let shown = Path::new(file_name)
        .extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            BROWSER_IMAGE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str())
        });
    if !shown {
        return None;
    }
    let folder = relative.parent().unwrap_or(Path::new(""));
    images
        .into_iter()
        .chain([dir])
        .map(|root| root.join(folder).join(file_name))
        // Beside the results, `x.png`'s label PNG has the photo's name: never shown as it.
        .find(|candidate| candidate.is_file() && !diffseg::is_diffseg_png(candidate))
        .and_then(|photo| relative_path(dir, &photo.canonicalize().ok()?))
        .map(|path| url_path(&path))
}

/// `to` relative to the folder `from` (both canonical), or `None` when they
/// share no root (another drive on Windows).
fn relative_path(from: &Path, to: &Path) -> Option<PathBuf> {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    if from.first() != to.first() {
        return None;
    }
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = from[common..]
        .iter()
        .map(|_| Component::ParentDir)
        .collect();
    path.extend(&to[common..]);
    Some(path)
}

/// A relative path as a URL path: `/`-separated, every byte but the
/// unreserved ones percent-encoded.
fn url_path(path: &Path) -> String {
    let mut url = String::new();
    for (index, component) in path.components().enumerate() {
        if index > 0 {
            url.push('/');
        }
        let component = match component {
            Component::ParentDir => "..".into(),
            other => other.as_os_str().to_string_lossy(),
        };
        for byte in component.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(byte as char);
            } else {
                let _ = write!(url, "%{byte:02X}");
            }
        }
    }
    url
}

/// `text` escaped for HTML text and quoted attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Standard base64 with padding (RFC 4648), for the `data:` URLs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk.iter().enumerate().fold(0u32, |acc, (index, &byte)| {
            acc | (byte as u32) << (16 - 8 * index)
        });
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(triple >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// `area` as a percentage of `pixels`, to one decimal ("<0.1" below that; the
/// page's script writes the same).
fn percent_text(area: u64, pixels: u64) -> String {
    let percent = 100.0 * area as f64 / pixels.max(1) as f64;
    if percent < 0.05 && area > 0 {
        "<0.1".into()
    } else {
        format!("{percent:.1}")
    }
}

/// Thousands separated by thin spaces: 1 234 567.
fn grouped(number: u64) -> String {
    let digits = number.to_string();
    let mut text = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            text.push('\u{2009}');
        }
        text.push(digit);
    }
    text
}

/// The whole page.
fn gallery_html(title: &str, figures: &[Figure], page_size: u32) -> String {
    let segments: usize = figures.iter().map(|figure| figure.segments.len()).sum();
    let any_photo = figures.iter().any(|figure| figure.photo.is_some());
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{GENERATOR_MARK} {version}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · diffseg results</title>
<style>
{css}</style>
</head>
<body data-page-size="{page_size}">
<header>
<h1>{title}</h1>
<p class="summary">{count} results, {segments} segments</p>
<div class="controls">
<label>Find <input id="filter" type="search" placeholder="name"></label>
<button id="previous" type="button">&larr; previous</button>
<span id="page">page 1</span>
<button id="next" type="button">next &rarr;</button>
"#,
        version = env!("CARGO_PKG_VERSION"),
        title = escape(title),
        css = include_str!("gallery.css"),
        count = grouped(figures.len() as u64),
        segments = grouped(segments as u64),
    );
    if any_photo {
        html.push_str(
            "<label>Overlay <input id=\"opacity\" type=\"range\" min=\"0\" max=\"100\" value=\"100\"></label>\n",
        );
    } else {
        html.push_str(
            "<span class=\"hint\">The original photos were not found: <code>diffseg view DIR --images PHOTOS</code> shows them under the overlays.</span>\n",
        );
    }
    html.push_str(
        "</div>\n<noscript><p>Paging, search and hovering need JavaScript: only the first page is shown.</p></noscript>\n</header>\n<main>\n",
    );
    for (index, figure) in figures.iter().enumerate() {
        figure_html(&mut html, figure, index >= page_size as usize);
    }
    let _ = write!(
        html,
        "</main>\n<div id=\"tooltip\" hidden></div>\n<script>\n{}</script>\n</body>\n</html>\n",
        include_str!("gallery.js")
    );
    html
}

/// One result's `<figure>`, `hidden` when it is not on the first page.
fn figure_html(html: &mut String, figure: &Figure, hidden: bool) {
    let name = escape(&figure.name);
    let pixels = figure.width as u64 * figure.height as u64;
    let _ = write!(
        html,
        "<figure data-image=\"{name}\" data-segments=\"{count}\" data-width=\"{width}\" data-height=\"{height}\"{hidden}>\n<div class=\"stage{map_only}\" style=\"aspect-ratio: {width} / {height}\">\n",
        count = figure.segments.len(),
        width = figure.width,
        height = figure.height,
        hidden = if hidden { " hidden" } else { "" },
        // No image to show: the page paints the segments from the hover map.
        map_only = if figure.overlay.is_none() && figure.photo.is_none() { " map-only" } else { "" },
    );
    let image = |html: &mut String, class: &str, source: &str, alt: &str| {
        let _ = writeln!(
            html,
            "<img class=\"{class}\" src=\"{}\" alt=\"{}\" loading=\"lazy\" decoding=\"async\">",
            escape(source),
            escape(alt)
        );
    };
    match (&figure.photo, &figure.overlay) {
        (Some(photo), Some(overlay)) => {
            image(html, "photo", photo, &format!("{}: photo", figure.name));
            image(html, "overlay", overlay, "");
        }
        (Some(photo), None) => image(html, "photo", photo, &format!("{}: photo", figure.name)),
        (None, Some(overlay)) => image(html, "base", overlay, &format!("{}: overlay", figure.name)),
        (None, None) => {}
    }
    if let Some(map) = &figure.hover_map {
        let _ = writeln!(
            html,
            "<canvas class=\"highlight\" width=\"{}\" height=\"{}\"{} data-map=\"{}\"></canvas>",
            map.width,
            map.height,
            if map.grey { " data-grey" } else { "" },
            map.data_url
        );
    }
    let _ = write!(
        html,
        "</div>\n<figcaption><button class=\"name\" type=\"button\" title=\"enlarge\">{name}</button> <span class=\"size\">{width}×{height}, {count} segments</span>\n<output class=\"hover\"></output>\n<span class=\"links\"><a href=\"{json}\">JSON</a>",
        width = figure.width,
        height = figure.height,
        count = figure.segments.len(),
        json = escape(&figure.json),
    );
    for (text, link) in [
        ("labels", &figure.labels),
        ("overlay", &figure.overlay),
        ("photo", &figure.photo),
    ] {
        if let Some(link) = link {
            let _ = write!(html, " <a href=\"{}\">{text}</a>", escape(link));
        }
    }
    html.push_str("</span></figcaption>\n<ol class=\"legend\">\n");
    for segment in &figure.segments {
        let [red, green, blue] = diffseg::palette_colour(segment.label);
        let name_attribute = segment
            .name
            .as_deref()
            .map(|name| format!(" data-name=\"{}\"", escape(name)))
            .unwrap_or_default();
        let name_text = segment
            .name
            .as_deref()
            .map(|name| format!(" <b>{}</b>", escape(name)))
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "<li data-label=\"{label}\" data-area=\"{area}\" style=\"--c:#{red:02x}{green:02x}{blue:02x}\"{name_attribute}>{label}{name_text} <small>{percent}%</small></li>",
            label = segment.label,
            area = segment.area,
            percent = percent_text(segment.area, pixels),
        );
    }
    html.push_str("</ol>\n</figure>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn urls_encode_everything_but_unreserved_characters() {
        assert_eq!(url_path(Path::new("a b/x#1?.png")), "a%20b/x%231%3F.png");
        assert_eq!(
            url_path(Path::new("../photos/é.jpg")),
            "../photos/%C3%A9.jpg"
        );
    }

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        let relative = relative_path(
            Path::new("/data/out/run"),
            Path::new("/data/photos/a/x.jpg"),
        );
        assert_eq!(relative, Some(PathBuf::from("../../photos/a/x.jpg")));
        let inside = relative_path(Path::new("/data/out"), Path::new("/data/out/x.jpg"));
        assert_eq!(inside, Some(PathBuf::from("x.jpg")));
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(7), "7");
        assert_eq!(grouped(1234), "1\u{2009}234");
        assert_eq!(grouped(1234567), "1\u{2009}234\u{2009}567");
    }
}
