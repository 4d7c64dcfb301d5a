//! Writes what `prepare` and `classify` make of a photo before any arithmetic:
//! the shorter side resized to SIZE, the centre SIZE x SIZE square, RGB u8 in
//! CHW order, raw bytes. Used by tools/torchvision_photo_reference.py so that
//! PyTorch computes its reference logits from exactly our resized pixels.
//!
//! `cargo run -p alexnet-data --example photo_pixels -- IMAGE SIZE OUT`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, size, out] = args.as_slice() else {
        eprintln!("usage: photo_pixels IMAGE SIZE OUT");
        std::process::exit(2);
    };
    let size: u32 = size.parse().expect("SIZE is a number");
    match alexnet_data::load_photo(std::path::Path::new(image), size, 100_000_000) {
        Ok(pixels) => std::fs::write(out, pixels).expect("writing OUT"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
