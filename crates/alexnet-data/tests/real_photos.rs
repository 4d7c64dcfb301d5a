//! Real photographs (CC0 / public domain, from scikit-image; see photos/README.md)
//! through `prepare`: a baseline JPEG, RGB PNGs and a greyscale PNG become
//! 256x256 RGB records, the shorter side rescaled and the centre kept.

mod common;

use alexnet_data::{Dataset, FolderOptions, PrepareOptions, load_photo, prepare_folder};
use common::{TempDir, photo};

const PHOTOS: &[(&str, &str)] = &[
    ("cat", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("coins", "coins.png"),
    ("rocket", "rocket.jpg"),
];

#[test]
fn real_photos_are_prepared_the_papers_way() {
    let tmp = TempDir::new("real-photos");
    for (class, file) in PHOTOS {
        let dir = tmp.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(photo(file), dir.join(file)).unwrap();
    }
    let mut options = PrepareOptions::new(&tmp.join("data"));
    options.progress = false;
    let summary = prepare_folder(&FolderOptions::new(&tmp.join("train")), &options).unwrap();
    assert_eq!(summary.skipped, 0, "{summary}");
    let dataset = Dataset::open(&tmp.join("data")).unwrap();
    let info = dataset.info();
    assert_eq!((info.channels, info.height, info.width), (3, 256, 256));
    let classes: Vec<&str> = info.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(classes, ["cat", "coffee", "coins", "rocket"]);
    let split = dataset.split("train").unwrap();
    assert_eq!(split.len(), 4);
    let plane = 256 * 256;
    for i in 0..4 {
        let (pixels, label) = split.image(i);
        let file = PHOTOS[label as usize].1;
        // Each stored image is what `load_photo` gives for the same file.
        assert_eq!(
            pixels,
            load_photo(&photo(file), 256, 100_000_000)
                .unwrap()
                .as_slice(),
            "{file}"
        );
        let (r, g, b) = (
            &pixels[..plane],
            &pixels[plane..2 * plane],
            &pixels[2 * plane..],
        );
        let spread = r.iter().max().unwrap() - r.iter().min().unwrap();
        assert!(
            spread > 100,
            "{file}: a photograph has contrast (red spans {spread})"
        );
        if file == "coins.png" {
            assert!(
                r == g && g == b,
                "the greyscale photo becomes three equal channels"
            );
        } else {
            assert!(r != g, "{file}: a colour photo keeps distinct channels");
        }
    }
    // The tabby cat is warm: more red than blue on average.
    let (pixels, _) = (0..4)
        .map(|i| split.image(i))
        .find(|(_, l)| *l == 0)
        .unwrap();
    let mean = |c: usize| {
        pixels[c * plane..(c + 1) * plane]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            / plane as f64
    };
    assert!(
        mean(0) > mean(2) + 10.0,
        "cat: red {} blue {}",
        mean(0),
        mean(2)
    );
}

/// Mean absolute difference of two equally long u8 images.
fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn a_cmyk_jpeg_decodes_to_the_colours_of_its_rgb_source() {
    // chelsea-cmyk.jpg is chelsea-small.png converted to CMYK and saved as an
    // Adobe CMYK JPEG (tools/make_cmyk_jpeg.py). Decoded, it must look like its
    // source: not inverted, not channel-swapped, not grey.
    let cmyk = load_photo(&photo("chelsea-cmyk.jpg"), 128, 100_000_000).unwrap();
    let rgb = load_photo(&photo("chelsea-small.png"), 128, 100_000_000).unwrap();
    let diff = mean_abs_diff(&cmyk, &rgb);
    assert!(
        diff < 6.0,
        "mean absolute difference {diff:.2} (0-255 scale)"
    );
    // The same comparison against the inverted source is far off, so the bound bites.
    let inverted: Vec<u8> = rgb.iter().map(|&v| 255 - v).collect();
    assert!(mean_abs_diff(&cmyk, &inverted) > 60.0);
    // Channels are in RGB order: the swap of red and blue is also far off.
    let plane = 128 * 128;
    let mut swapped = rgb.clone();
    swapped[..plane].copy_from_slice(&rgb[2 * plane..]);
    swapped[2 * plane..].copy_from_slice(&rgb[..plane]);
    assert!(mean_abs_diff(&cmyk, &swapped) > 2.0 * diff);
}
