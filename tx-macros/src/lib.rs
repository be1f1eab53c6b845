//! stub
#![forbid(unsafe_code)]
use proc_macro::TokenStream;
/// stub
#[proc_macro_attribute]
pub fn transactional(_args: TokenStream, item: TokenStream) -> TokenStream { item }
