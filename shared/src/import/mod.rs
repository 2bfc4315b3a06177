//! CDR import: a carrier export (ZIP of CSV, or a plain/gzipped CSV) from S3
//! into `call_detail_record`, exactly once, with every bad row reported.

pub mod format;
pub mod normalize;
pub mod parse;
pub mod source;
pub mod zip;
