//! Brotli for dynamic answers. Pingora 0.9.1's brotli encoder flushes but never finishes its
//! stream (strict decoders reject it), so the gateway encodes br itself: whole bodies it
//! writes (pages, errors) at once, proxied bodies chunk by chunk, finishing the stream at the
//! end. gzip and zstd of proxied answers stay with Pingora's compression module; which coding
//! a client gets is decided in `edge::coding`.

use bytes::Bytes;
use std::io::Write;
use std::sync::Mutex;

/// Window bits and a mid quality: good ratio at a CPU cost close to gzip 6.
const LGWIN: u32 = 22;
const QUALITY: u32 = 5;

/// Text-like types worth compressing (never images, archives or already-encoded data).
pub fn compressible(content_type: &str) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "image/svg+xml"
                | "application/wasm"
        )
}

/// Compresses a whole body.
pub fn compress_all(data: &[u8]) -> Vec<u8> {
    let mut w = brotli::CompressorWriter::new(
        Vec::with_capacity(data.len() / 3 + 64),
        4096,
        QUALITY,
        LGWIN,
    );
    // Writing into a Vec cannot fail.
    let _ = w.write_all(data);
    w.into_inner()
}

/// A streaming encoder for one response body.
pub struct BrStream(Mutex<Option<brotli::CompressorWriter<Vec<u8>>>>);

impl Default for BrStream {
    fn default() -> Self {
        BrStream(Mutex::new(Some(brotli::CompressorWriter::new(
            Vec::new(),
            4096,
            QUALITY,
            LGWIN,
        ))))
    }
}

impl BrStream {
    /// Encodes one chunk; returns what is ready to send (flushed, so the client is not
    /// kept waiting on a chunked stream).
    pub fn push(&self, data: &[u8]) -> Bytes {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = g.as_mut() else {
            return Bytes::new();
        };
        let _ = w.write_all(data);
        let _ = w.flush();
        Bytes::from(std::mem::take(w.get_mut()))
    }

    /// Finishes the stream; returns its last bytes.
    pub fn finish(&self) -> Bytes {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match g.take() {
            Some(w) => Bytes::from(w.into_inner()),
            None => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .expect("a complete brotli stream");
        out
    }

    #[test]
    fn streamed_chunks_form_one_complete_stream() {
        let s = BrStream::default();
        let mut wire = Vec::new();
        let text = "{\"nombre\":\"Ana\",\"tipo_sangre\":\"O+\"}".repeat(200);
        for chunk in text.as_bytes().chunks(700) {
            wire.extend_from_slice(&s.push(chunk));
        }
        wire.extend_from_slice(&s.finish());
        assert_eq!(decode(&wire), text.as_bytes());
        assert!(wire.len() < text.len() / 4);
    }

    #[test]
    fn whole_bodies_round_trip() {
        let text = b"<html>hola</html>".repeat(100);
        assert_eq!(decode(&compress_all(&text)), text);
    }

    #[test]
    fn only_text_like_types_are_compressible() {
        assert!(compressible("text/html; charset=utf-8"));
        assert!(compressible("application/json"));
        assert!(compressible("application/problem+json"));
        assert!(!compressible("image/png"));
        assert!(!compressible("application/zip"));
        assert!(!compressible(""));
    }
}
