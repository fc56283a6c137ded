//! A kernel setting's file under /proc/sys, read and written whole.

use std::fs::File;
use std::io::{self, Read, Seek, Write};

/// The setting's text, read from the file's start.
pub fn read(file: &mut File) -> io::Result<String> {
    let mut text = String::new();
    file.rewind()?;
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Set it to `value`: a sysctl is written whole, from its start.
pub fn write(file: &mut File, value: &str) -> io::Result<()> {
    file.rewind()?;
    file.write_all(value.as_bytes())
}
