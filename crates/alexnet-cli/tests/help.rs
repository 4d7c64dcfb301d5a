//! What a newcomer meets first: help that fits the command, a pointer to the
//! right `prepare` command for a dataset root, ImageNet's class names for folders
//! named by WordNet ids, shell completions and the manual page.

mod common;

use std::path::Path;

use common::{fails, ok, temp_dir};

/// A folder of class folders, two small photos each.
fn photo_classes(root: &Path, classes: &[&str]) {
    for (c, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2u8 {
            let shade = 40 * c as u8 + 20 * i;
            image::RgbImage::from_pixel(40, 40, image::Rgb([shade, 100, 200 - shade]))
                .save(dir.join(format!("{i}.png")))
                .unwrap();
        }
    }
}

#[test]
fn commands_without_an_engine_do_not_list_its_flags() {
    for command in [
        &["import", "torchvision"][..],
        &["prepare"],
        &["plot"],
        &["info"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(&args);
        for flag in [
            "--precision",
            "--bf16-kernel",
            "--conv-algorithms",
            "--bf16-conv-layout",
        ] {
            assert!(
                !help.contains(flag),
                "{command:?} --help lists {flag}:\n{help}"
            );
        }
    }
    let help = ok(&["train", "--help"]);
    assert!(
        help.contains("Engine:") && help.contains("--precision"),
        "{help}"
    );
    assert!(help.contains("Example:"), "{help}");
    let top = ok(&["--help"]);
    assert!(top.contains("Start here: `alexnet prepare"), "{top}");
}

#[test]
fn a_dataset_root_with_train_and_val_gets_the_command_that_prepares_it() {
    let root = temp_dir("split-root");
    photo_classes(&root.join("photos/train"), &["cat", "dog"]);
    photo_classes(&root.join("photos/val"), &["cat", "dog"]);
    let photos = root.join("photos");
    let out = root.join("data");
    let text = fails(&[
        "prepare",
        photos.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let expected = format!(
        "alexnet prepare {} --val {}",
        photos.join("train").display(),
        photos.join("val").display()
    );
    assert!(text.contains(&expected), "{text}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn folders_named_by_wordnet_ids_get_imagenets_class_names() {
    let root = temp_dir("wordnet");
    photo_classes(&root.join("photos"), &["n01440764", "n01443537"]);
    let out = root.join("data");
    let (photos, data) = (root.join("photos"), out.to_str().unwrap());
    ok(&[
        "prepare",
        photos.to_str().unwrap(),
        "--out",
        data,
        "--size",
        "32",
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    let classes = manifest["classes"].as_array().unwrap();
    assert_eq!(classes[0]["id"], "n01440764");
    assert_eq!(classes[0]["name"], "tench");
    assert_eq!(classes[1]["name"], "goldfish");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn completions_and_the_manual_come_from_the_same_definitions() {
    let bash = ok(&["completions", "bash"]);
    assert!(
        bash.contains("alexnet") && bash.contains("--checkpoint"),
        "{bash}"
    );
    let zsh = ok(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef alexnet"), "{zsh}");
    let man = ok(&["man"]);
    assert!(
        man.contains(".TH alexnet") && man.contains("prepare"),
        "{man}"
    );
}
