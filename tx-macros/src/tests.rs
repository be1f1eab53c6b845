//! Unit tests of the phases (the compile-fail cases are trybuild tests in the tests crate).

mod attr;
mod expand;
mod size;
