//! Errors of the adapters.

use std::error::Error as StdError;

/// Result with the adapters' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong opening or reading a product's storage.
///
/// Messages are written for the mesh's operators (they may name a location as written in the
/// contract). The gateway decides what a client sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binding is invalid; the message names the field and the fix.
    #[error("invalid binding: {0}")]
    InvalidBinding(String),

    /// The binding names an adapter kind this gateway was built without.
    #[error("no adapter of kind `{kind}` is registered; available: {available}")]
    UnknownAdapter {
        /// Kind asked for.
        kind: String,
        /// Kinds registered, comma-separated.
        available: String,
    },

    /// The data cannot be reached or read now (missing files, unreachable store).
    #[error("data unavailable: {0}")]
    Unavailable(String),

    /// Storage written through the gateway that has no version yet (declared, never published).
    #[error("no version has been published yet")]
    NotPublished,

    /// A version of the data that does not exist or is no longer kept.
    #[error("{0}")]
    NotFound(String),

    /// Writing a new version failed; nothing was committed.
    #[error("the commit failed: {0}")]
    Write(String),

    /// DataFusion failed while opening the table (schema inference, listing).
    #[error("opening the table failed: {0}")]
    DataFusion(#[from] Box<datafusion::error::DataFusionError>),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Self::DataFusion(Box::new(e))
    }
}

impl Error {
    /// Wraps this error so it can travel through DataFusion and be found again with
    /// [`Error::find_in`].
    pub fn into_datafusion(self) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(self))
    }

    /// Finds an adapter error anywhere in an error's source chain.
    pub fn find_in<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a Error> {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(found) = err.downcast_ref::<Error>() {
                return Some(found);
            }
            if let Some(datafusion::error::DataFusionError::External(inner)) =
                err.downcast_ref::<datafusion::error::DataFusionError>()
                && let Some(found) = inner.downcast_ref::<Error>()
            {
                return Some(found);
            }
            cur = err.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_through_datafusion_wrapping() {
        let df = Error::Unavailable("gone".into()).into_datafusion();
        let ctx = df.context("while scanning");
        let found = Error::find_in(&ctx).expect("adapter error is found");
        assert!(matches!(found, Error::Unavailable(m) if m == "gone"));
    }
}
