//! OpenAPI document and Swagger UI assets, served from the binary.

use std::borrow::Cow;

/// The static asset at `path`, if any: content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, Cow<'static, [u8]>)> {
    let _ = path;
    None
}
