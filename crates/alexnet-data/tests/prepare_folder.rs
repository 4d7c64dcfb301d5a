//! Preparing folders of photographs: every format and colour layout we read,
//! the paper's resize and centre crop, broken files skipped with their reasons,
//! class lists, validation folders, and resuming an interrupted run.

mod common;

use std::io::Cursor;
use std::path::Path;

use alexnet_data::format::{MANIFEST_FILE, Manifest, SKIPPED_FILE};
use alexnet_data::{
    Dataset, FolderOptions, PrepareOptions, SourceKind, detect_source, load_photo, prepare_folder,
};
use common::*;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage};

const S: u32 = 16;

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn noise_rgb(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = Lcg::new(seed);
    ImageBuffer::from_fn(w, h, |_, _| Rgb([rng.byte(), rng.byte(), rng.byte()]))
}

/// CHW bytes of an RGB image of the stored size.
fn chw(image: &RgbImage) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let mut out = vec![0u8; 3 * (w * h) as usize];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            out[c * (w * h) as usize + (y * w + x) as usize] = p[c];
        }
    }
    out
}

/// An indexed-colour PNG with a transparency table, which `image` cannot write.
fn palette_png(indices: &[u8], palette: &[[u8; 3]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, S, S);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette.iter().flatten().copied().collect::<Vec<u8>>());
    encoder.set_trns(vec![255u8, 128, 0, 40]);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(indices).unwrap();
    writer.finish().unwrap();
    bytes
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A tiny PNG whose header declares `w` x `h` RGB pixels: a decompression bomb's shape.
fn declared_png(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut zlib, &vec![0u8; 1 << 16]).unwrap();
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", &zlib.finish().unwrap()));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// A valid small JPEG whose frame header is rewritten to declare `w` x `h`.
fn declared_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = encode(
        &DynamicImage::ImageRgb8(noise_rgb(16, 16, 5)),
        ImageFormat::Jpeg,
    );
    let sof = bytes
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline JPEG frame header");
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

struct Expect {
    /// (class folder, file name, expected CHW pixels or None when only checked loosely)
    good: Vec<(String, String, Option<Vec<u8>>)>,
    /// File names expected in skipped.txt with a word of the reason.
    bad: Vec<(String, &'static str)>,
}

/// Writes a training tree with every format and layout, plus broken files.
#[allow(clippy::too_many_lines)] // a table of files, each with the outcome it expects
fn photo_tree(root: &Path) -> Expect {
    for class in ["cat", "dog", "zebra"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
    }
    let mut good = Vec::new();
    let mut put = |class: &str, name: &str, bytes: Vec<u8>, want: Option<Vec<u8>>| {
        std::fs::write(root.join(class).join(name), bytes).unwrap();
        good.push((class.to_string(), name.to_string(), want));
    };

    // Lossless formats at the stored size come back exactly.
    let a = noise_rgb(S, S, 1);
    put(
        "cat",
        "a.png",
        encode(&DynamicImage::ImageRgb8(a.clone()), ImageFormat::Png),
        Some(chw(&a)),
    );
    let grey: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(S, S, |x, y| Luma([(x * 13 + y * 7) as u8]));
    let grey_rgb: RgbImage = ImageBuffer::from_fn(S, S, |x, y| {
        let v = grey.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    put(
        "cat",
        "b.png",
        encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png),
        Some(chw(&grey_rgb)),
    );
    let sixteen: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(S, S, |x, y| {
        let p = a.get_pixel(x, y);
        Rgb([p[0] as u16 * 257, p[1] as u16 * 257, p[2] as u16 * 257])
    });
    put(
        "dog",
        "d16.png",
        encode(&DynamicImage::ImageRgb16(sixteen), ImageFormat::Png),
        Some(chw(&a)),
    );
    let b = noise_rgb(S, S, 2);
    put(
        "dog",
        "g.bmp",
        encode(&DynamicImage::ImageRgb8(b.clone()), ImageFormat::Bmp),
        Some(chw(&b)),
    );
    put(
        "dog",
        "h.webp",
        encode(&DynamicImage::ImageRgb8(b.clone()), ImageFormat::WebP),
        Some(chw(&b)),
    );
    put(
        "dog",
        "i.tiff",
        encode(&DynamicImage::ImageRgb8(b.clone()), ImageFormat::Tiff),
        Some(chw(&b)),
    );
    // A GIF holds at most 256 colours: four flat colours survive exactly.
    let four: RgbImage = ImageBuffer::from_fn(S, S, |x, y| {
        [
            Rgb([200, 10, 10]),
            Rgb([10, 200, 10]),
            Rgb([10, 10, 200]),
            Rgb([250, 250, 250]),
        ][((x / 8) + 2 * (y / 8)) as usize]
    });
    put(
        "dog",
        "f.gif",
        encode(&DynamicImage::ImageRgb8(four.clone()), ImageFormat::Gif),
        Some(chw(&four)),
    );

    // Palette with transparency: the palette's colours, alpha dropped.
    let palette = [[255u8, 0, 0], [0, 255, 0], [0, 0, 255], [90, 80, 70]];
    let indices: Vec<u8> = (0..S * S).map(|i| (i % 4) as u8).collect();
    let pal_rgb: RgbImage =
        ImageBuffer::from_fn(S, S, |x, y| Rgb(palette[((y * S + x) % 4) as usize]));
    put(
        "cat",
        "c.png",
        palette_png(&indices, &palette),
        Some(chw(&pal_rgb)),
    );

    // JPEG (colour and grey), larger than the stored size: checked loosely.
    let flat: RgbImage = ImageBuffer::from_pixel(64, 48, Rgb([120, 60, 30]));
    put(
        "dog",
        "e.jpg",
        encode(&DynamicImage::ImageRgb8(flat), ImageFormat::Jpeg),
        None,
    );
    let grey_jpeg: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(20, 20, Luma([77]));
    put(
        "dog",
        "e2.jpeg",
        encode(&DynamicImage::ImageLuma8(grey_jpeg), ImageFormat::Jpeg),
        None,
    );

    // Centre crop geometry: landscape red|blue halves, portrait green/white halves.
    let land: RgbImage = ImageBuffer::from_fn(48, 32, |x, _| {
        if x < 24 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    put(
        "zebra",
        "j.png",
        encode(&DynamicImage::ImageRgb8(land), ImageFormat::Png),
        None,
    );
    let port: RgbImage = ImageBuffer::from_fn(32, 64, |_, y| {
        if y < 32 {
            Rgb([0, 255, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    put(
        "zebra",
        "k.png",
        encode(&DynamicImage::ImageRgb8(port), ImageFormat::Png),
        None,
    );

    // Broken files of every kind.
    let mut bad = Vec::new();
    std::fs::write(root.join("cat/empty.jpg"), b"").unwrap();
    bad.push(("cat/empty.jpg".into(), "empty"));
    let noisy = encode(
        &DynamicImage::ImageRgb8(noise_rgb(64, 64, 9)),
        ImageFormat::Jpeg,
    );
    std::fs::write(root.join("dog/truncated.jpg"), &noisy[..noisy.len() / 2]).unwrap();
    bad.push(("dog/truncated.jpg".into(), "truncated"));
    std::fs::write(root.join("dog/words.jpg"), b"this is not a picture\n").unwrap();
    bad.push(("dog/words.jpg".into(), "not an image"));
    let png = encode(
        &DynamicImage::ImageRgb8(noise_rgb(40, 40, 3)),
        ImageFormat::Png,
    );
    std::fs::write(root.join("zebra/cut.png"), &png[..png.len() * 2 / 3]).unwrap();
    bad.push(("zebra/cut.png".into(), "decode"));
    std::fs::write(root.join("zebra/bomb.png"), declared_png(100_000, 100_000)).unwrap();
    bad.push(("zebra/bomb.png".into(), "limit"));
    std::fs::write(root.join("zebra/bomb.jpg"), declared_jpeg(60_000, 60_000)).unwrap();
    bad.push(("zebra/bomb.jpg".into(), "limit"));
    std::fs::write(
        root.join("zebra/old.ppm"),
        b"P6\n2 2\n255\n\0\0\0\0\0\0\0\0\0\0\0\0",
    )
    .unwrap();
    bad.push(("zebra/old.ppm".into(), "Pnm"));

    // What is not a file: a folder (not entered), a dangling link, a link loop,
    // a FIFO (never opened: reading it would wait for a writer forever).
    std::fs::create_dir_all(root.join("cat/nested")).unwrap();
    std::fs::write(root.join("cat/nested/z.png"), &png).unwrap();
    bad.push(("cat/nested".into(), "a directory"));
    std::os::unix::fs::symlink("missing.jpg", root.join("dog/gone.jpg")).unwrap();
    bad.push(("dog/gone.jpg".into(), "dangling"));
    std::os::unix::fs::symlink("loop.jpg", root.join("dog/loop.jpg")).unwrap();
    bad.push(("dog/loop.jpg".into(), "loop"));
    let fifo = root.join("zebra/pipe.jpg");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    bad.push(("zebra/pipe.jpg".into(), "FIFO"));
    // A link to a good file is that file.
    std::os::unix::fs::symlink("a.png", root.join("cat/a-link.png")).unwrap();
    good.push(("cat".into(), "a-link.png".into(), Some(chw(&a))));

    // Hidden files and files beside the class folders are not images of a class.
    std::fs::write(root.join("cat/.DS_Store"), b"x").unwrap();
    std::fs::write(root.join("README.txt"), b"about").unwrap();

    Expect { good, bad }
}

fn skipped_lines(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(SKIPPED_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

#[test]
fn photo_folders_every_format_and_broken_files_skipped() {
    let tmp = TempDir::new("photos");
    let root = tmp.join("pets/train");
    let mut expect = photo_tree(&root);
    assert_eq!(detect_source(&root).unwrap(), SourceKind::Folder);

    let mut folder = FolderOptions::new(&root);
    folder.size = S;
    let mut opts = PrepareOptions::new(&tmp.join("data"));
    opts.shard_bytes = 3 * (4 + 3 * 256) + 32; // three images a shard
    let summary = prepare_folder(&folder, &opts).unwrap();
    assert_eq!(
        summary.name, "pets",
        "a folder called train is named after its parent"
    );
    assert_eq!(summary.skipped, expect.bad.len() as u64);
    assert_eq!(
        summary.splits,
        vec![("train".to_string(), expect.good.len() as u64)]
    );
    let line = summary.to_string();
    let skipped_text = format!("{} skipped (see skipped.txt)", expect.bad.len());
    assert!(line.contains(&skipped_text), "{line}");

    // Every broken file is listed, with a reason that says what is wrong.
    let skipped = skipped_lines(&tmp.join("data"));
    assert_eq!(skipped.len(), expect.bad.len(), "{skipped:?}");
    for (name, word) in &expect.bad {
        let (_, reason) = skipped
            .iter()
            .find(|(path, _)| path.ends_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in {skipped:?}"));
        assert!(reason.contains(word), "{name}: {reason}");
    }

    let ds = Dataset::open(&tmp.join("data")).unwrap();
    let info = ds.info();
    assert_eq!(
        (info.channels, info.height, info.width),
        (3, S as usize, S as usize)
    );
    let ids: Vec<&str> = info.classes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["cat", "dog", "zebra"]);
    let split = ds.split("train").unwrap();
    // Images come in class-folder order, then file-name order.
    expect.good.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let plane = (S * S) as usize;
    for (i, (class, name, want)) in expect.good.iter().enumerate() {
        let (pixels, label) = split.image(i);
        assert_eq!(info.classes[label as usize].id, *class, "{name}");
        if let Some(want) = want {
            assert_eq!(pixels, &want[..], "{class}/{name} differs");
        }
        let px = |c: usize, y: usize, x: usize| pixels[c * plane + y * S as usize + x];
        match name.as_str() {
            "e.jpg" => {
                for (c, v) in [120i32, 60, 30].iter().enumerate() {
                    assert!(
                        (px(c, 8, 8) as i32 - v).abs() <= 4,
                        "{name}: {}",
                        px(c, 8, 8)
                    );
                }
            }
            "e2.jpeg" => {
                for c in 0..3 {
                    assert!((px(c, 5, 5) as i32 - 77).abs() <= 2);
                }
                assert_eq!(px(0, 5, 5), px(2, 5, 5), "grey stays grey");
            }
            "j.png" => {
                // 48x32 -> 24x16, the central 16 columns: left half red, right half blue.
                assert_eq!((px(0, 8, 1), px(2, 8, 1)), (255, 0));
                assert_eq!((px(0, 8, 14), px(2, 8, 14)), (0, 255));
                assert!(px(0, 8, 6) > 200 && px(2, 8, 9) > 200);
            }
            "k.png" => {
                // 32x64 -> 16x32, the central 16 rows: top half green, bottom white.
                assert_eq!((px(0, 1, 8), px(1, 1, 8)), (0, 255));
                assert_eq!((px(0, 14, 8), px(2, 14, 8)), (255, 255));
            }
            _ => {}
        }
    }
    // The mean is over the images kept.
    let mean = direct_mean((0..split.len()).map(|i| split.image(i).0), 3 * plane);
    for (a, b) in ds.mean().iter().zip(&mean) {
        assert!((*a as f64 - b).abs() < 1e-3);
    }
}

#[test]
fn load_photo_matches_the_prepared_pixels() {
    let tmp = TempDir::new("loadphoto");
    let img = noise_rgb(S, S, 4);
    let path = tmp.join("x.png");
    img.save(&path).unwrap();
    assert_eq!(load_photo(&path, S, 1 << 20).unwrap(), chw(&img));
    std::fs::write(tmp.join("y.jpg"), b"").unwrap();
    let err = load_photo(&tmp.join("y.jpg"), S, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("y.jpg") && err.contains("empty"), "{err}");
    let big = noise_rgb(120, 100, 4);
    big.save(tmp.join("big.png")).unwrap();
    let err = load_photo(&tmp.join("big.png"), S, 10_000)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("120x100") && err.contains("limit of 10000 pixels"),
        "{err}"
    );
}

fn write_png(path: &Path, seed: u64) -> Vec<u8> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = noise_rgb(S, S, seed);
    img.save(path).unwrap();
    chw(&img)
}

#[test]
fn synsets_and_validation_folders() {
    let tmp = TempDir::new("synsets");
    let train = tmp.join("imagenet/train");
    for (k, wnid) in ["n02", "n01"].iter().enumerate() {
        for j in 0..2 {
            write_png(
                &train.join(wnid).join(format!("{wnid}_{j}.png")),
                (k * 10 + j) as u64,
            );
        }
    }
    // The list's order is the class order: n03 has no training images but keeps its place.
    std::fs::write(
        tmp.join("synsets.txt"),
        "n03 goldfish, Carassius auratus\nn02 tench, Tinca tinca\n\nn01 great white shark\n",
    )
    .unwrap();
    // A flat validation folder labelled by 1-based indices into that list.
    let val = tmp.join("imagenet/val");
    let v0 = write_png(&val.join("ILSVRC2012_val_00000001.png"), 100);
    let v1 = write_png(&val.join("ILSVRC2012_val_00000002.png"), 101);
    let v2 = write_png(&val.join("ILSVRC2012_val_00000003.png"), 102);
    std::fs::write(tmp.join("truth.txt"), "3\n1\n2\n").unwrap();

    let mut folder = FolderOptions::new(&train);
    folder.size = S;
    folder.synsets = Some(tmp.join("synsets.txt"));
    folder.val = Some(val.clone());
    folder.val_labels = Some(tmp.join("truth.txt"));
    let summary = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("data"))).unwrap();
    assert_eq!(summary.name, "imagenet");
    let ds = Dataset::open(&tmp.join("data")).unwrap();
    let classes = &ds.info().classes;
    assert_eq!(classes.len(), 3);
    assert_eq!(
        (classes[1].id.as_str(), classes[1].name.as_str()),
        ("n02", "tench, Tinca tinca")
    );
    assert_eq!(classes[2].name, "great white shark");
    let split = ds.split("train").unwrap();
    let labels: Vec<u32> = (0..4).map(|i| split.label(i)).collect();
    assert_eq!(
        labels,
        [2, 2, 1, 1],
        "folders n01 then n02, labelled by the list"
    );
    let val_split = ds.split("val").unwrap();
    assert_eq!(val_split.image(0), (&v0[..], 2));
    assert_eq!(val_split.image(1), (&v1[..], 0));
    assert_eq!(val_split.image(2), (&v2[..], 1));

    // Labels that do not fit are refused, naming the file.
    std::fs::write(tmp.join("truth.txt"), "3\n1\n").unwrap();
    let err = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d2")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truth.txt") && err.contains("3 files") && err.contains("found 2"),
        "{err}"
    );
    std::fs::write(tmp.join("truth.txt"), "3\n1\n4\n").unwrap();
    let err = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d2")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("1..=3"), "{err}");

    // A class folder missing from the list is an error, not a silent new class.
    write_png(&train.join("n09/x.png"), 7);
    let err = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d2")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("n09") && err.contains("synsets.txt"), "{err}");
    std::fs::remove_dir_all(train.join("n09")).unwrap();

    // A validation folder in the training layout.
    let val2 = tmp.join("val2");
    let w = write_png(&val2.join("n01/a.png"), 200);
    folder.val = Some(val2);
    folder.val_labels = None;
    prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d3"))).unwrap();
    let ds = Dataset::open(&tmp.join("d3")).unwrap();
    assert_eq!(ds.split("val").unwrap().image(0), (&w[..], 2));
}

#[test]
fn an_interrupted_preparation_resumes_where_it_stopped() {
    let tmp = TempDir::new("resume");
    let root = tmp.join("src");
    for k in 0..3 {
        for j in 0..5 {
            write_png(&root.join(format!("c{k}/{j}.png")), (k * 5 + j) as u64);
        }
    }
    std::fs::write(root.join("c1/bad.png"), b"nope").unwrap();
    let mut folder = FolderOptions::new(&root);
    folder.size = S;
    let record = 4 + 3 * (S * S) as u64;

    // The same work in one go, for comparison.
    let mut once = PrepareOptions::new(&tmp.join("once"));
    once.shard_bytes = 32 + 4 * record;
    prepare_folder(&folder, &once).unwrap();

    let mut opts = PrepareOptions::new(&tmp.join("data"));
    opts.shard_bytes = 32 + 4 * record;
    opts.stop_after_shards = Some(2);
    let first = prepare_folder(&folder, &opts).unwrap();
    assert!(!first.complete);
    assert_eq!(first.written_shards, 2);
    assert!(!tmp.join("data").exists());
    assert!(tmp.join("data.partial/train-00001.shard").exists());

    opts.stop_after_shards = None;
    let second = prepare_folder(&folder, &opts).unwrap();
    assert!(second.complete);
    assert_eq!(second.resumed_shards, 2);
    assert_eq!(second.written_shards, 2);
    assert_eq!(second.skipped, 1);
    let manifest = |dir: &str| -> Manifest {
        serde_json::from_str(&std::fs::read_to_string(tmp.join(dir).join(MANIFEST_FILE)).unwrap())
            .unwrap()
    };
    let (a, b) = (manifest("once"), manifest("data"));
    assert_eq!(a.splits, b.splits);
    assert_eq!(a.mean, b.mean);
    assert_eq!(a.pca, b.pca);
    assert_eq!(
        std::fs::read(tmp.join("once").join(SKIPPED_FILE)).unwrap(),
        std::fs::read(tmp.join("data").join(SKIPPED_FILE)).unwrap()
    );

    // A partial directory from different work is discarded, not continued.
    let mut other = PrepareOptions::new(&tmp.join("other"));
    other.shard_bytes = 32 + 4 * record;
    other.stop_after_shards = Some(1);
    prepare_folder(&folder, &other).unwrap();
    folder.size = S / 2;
    other.stop_after_shards = None;
    let summary = prepare_folder(&folder, &other).unwrap();
    assert_eq!(summary.resumed_shards, 0);
    assert_eq!(
        Dataset::open(&tmp.join("other")).unwrap().info().height,
        (S / 2) as usize
    );
}

#[test]
fn a_folder_of_nothing_usable_fails_and_says_so() {
    let tmp = TempDir::new("nothing");
    std::fs::create_dir_all(tmp.join("src/a")).unwrap();
    std::fs::write(tmp.join("src/a/x.jpg"), b"").unwrap();
    let mut folder = FolderOptions::new(&tmp.join("src"));
    folder.size = S;
    let err = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no usable images") && err.contains("1 skipped"),
        "{err}"
    );
    let err = prepare_folder(
        &FolderOptions::new(&tmp.join("src/a")),
        &PrepareOptions::new(&tmp.join("d")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("class folders"), "{err}");
}

#[test]
fn an_empty_class_and_an_output_inside_the_input_are_refused() {
    let tmp = TempDir::new("careless-folders");
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    write_png(&src.join("a/x.png"), 1);
    // A class folder that is a link to an empty folder elsewhere.
    std::fs::create_dir_all(tmp.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.join("elsewhere"), src.join("b")).unwrap();
    let mut folder = FolderOptions::new(&src);
    folder.size = S;
    let err = prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'b'") && err.contains("a link to") && err.contains("no entries"),
        "{err}"
    );
    std::fs::remove_file(src.join("b")).unwrap();

    let err = prepare_folder(&folder, &PrepareOptions::new(&src.join("a/data")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("inside the input folder"), "{err}");
    assert!(!src.join("a/data").exists(), "nothing is written there");
    prepare_folder(&folder, &PrepareOptions::new(&tmp.join("d"))).unwrap();
}
