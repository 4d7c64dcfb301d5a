//! ImageNet-1k's class list, shipped with the project so that imported ImageNet
//! models name their classes: WordNet ids in index order and readable names.

const IMAGENET_1K: &str = include_str!("../assets/imagenet1k-classes.tsv");

/// Class ids and names in label order.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassList {
    pub ids: Vec<String>,
    /// The first of each synset's names ("great white shark"), for display.
    pub names: Vec<String>,
}

/// The 1000 ILSVRC-2012 classes.
pub fn imagenet_1k() -> ClassList {
    let mut list = ClassList {
        ids: Vec::with_capacity(1000),
        names: Vec::with_capacity(1000),
    };
    for line in IMAGENET_1K.lines().filter(|l| !l.starts_with('#')) {
        let (id, names) = line.split_once('\t').unwrap_or((line, ""));
        let first = names.split(", ").next().unwrap_or(id);
        list.ids.push(id.to_string());
        list.names.push(first.to_string());
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_every_class_in_index_order() {
        let list = imagenet_1k();
        assert_eq!(list.ids.len(), 1000);
        assert_eq!(list.names.len(), 1000);
        // Anchors known from the ILSVRC-2012 devkit's ordering (sorted WordNet ids).
        assert_eq!(
            (list.ids[0].as_str(), list.names[0].as_str()),
            ("n01440764", "tench")
        );
        assert_eq!(list.names[1], "goldfish");
        assert_eq!(list.ids[999], "n15075141");
        assert_eq!(list.names[999], "toilet tissue");
        let mut sorted = list.ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, list.ids, "ids are distinct and in sorted order");
        assert!(list.names.iter().all(|n| !n.is_empty()));
    }
}
