//! The preprocessing that imported weights expect (the rest of [`Preprocess`]
//! is the training crate's: it is what a trained net's checkpoint carries).

use alexnet::spec::PixelScale;
use alexnet_interop::Imported;
use alexnet_train::Preprocess;

/// The preprocessing imported weights expect, with the ImageNet-1k class names
/// attached when the net has 1000 classes.
pub fn from_imported(imported: &Imported) -> Preprocess {
    let convention = &imported.input;
    let size = convention.resize;
    let plane = size * size;
    let (channel_std, per_channel_mean) = match convention.pixels {
        PixelScale::RawMinusMean => (None, convention.channel_mean),
        PixelScale::UnitMeanStd => (
            Some(convention.channel_std),
            convention.channel_mean.map(|m| 255.0 * m),
        ),
    };
    let mean = convention.mean_image.clone().unwrap_or_else(|| {
        per_channel_mean
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, plane))
            .collect()
    });
    let classes = imported.spec.classes;
    let (class_ids, class_names) = if classes == 1000 {
        let list = alexnet_interop::classes::imagenet_1k();
        (list.ids, list.names)
    } else {
        let numbered: Vec<String> = (0..classes).map(|c| format!("class {c}")).collect();
        (numbered.clone(), numbered)
    };
    Preprocess {
        stored: [3, size, size],
        subtract_mean: true,
        pixels: convention.pixels,
        channel_std,
        class_ids,
        class_names,
        dataset: imported.source.clone(),
        mean,
    }
}
