//! What the procedural datasets share: a generator that renders any `(split, index)`
//! and one generic [`SplitDataset`] that turns a split of it into a loader
//! [`Dataset`].

use super::loader::{DataError, Dataset, Sample};
use super::shapes::Split;

/// A stateless generator of samples, pure in `(split, index)`.
pub trait Procedural: Clone + Send + Sync {
    /// Number of images in `split`.
    fn split_len(&self, split: Split) -> usize;
    /// Renders image `index` of `split` (any index renders; bounds are checked by
    /// [`SplitDataset`]).
    fn render(&self, split: Split, index: usize) -> Sample;
    /// Number of classes.
    fn class_count(&self) -> usize;
}

/// One split of a [`Procedural`] generator, usable by the loader.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitDataset<P> {
    source: P,
    split: Split,
}

impl<P: Procedural> SplitDataset<P> {
    /// Split `split` of `source`.
    pub fn new(source: P, split: Split) -> Self {
        Self { source, split }
    }

    /// The underlying generator.
    pub fn source(&self) -> &P {
        &self.source
    }

    /// Which split this is.
    pub fn which(&self) -> Split {
        self.split
    }
}

impl<P: Procedural> Dataset for SplitDataset<P> {
    fn len(&self) -> usize {
        self.source.split_len(self.split)
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let len = self.len();
        if index >= len {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        Ok(self.source.render(self.split, index))
    }

    fn num_classes(&self) -> usize {
        self.source.class_count()
    }
}
