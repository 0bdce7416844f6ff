//! The protobuf codec of every generated server and client: prost's, with a smaller
//! starting buffer per call. tonic starts each call with an 8 KiB encode buffer that lives
//! as long as the stream; most of our messages are a few hundred bytes, and every idle
//! Subscribe stream kept those pages. The buffer still grows for larger messages.
//!
//! A stream also hands its bytes to HTTP/2 once 1 KiB has gathered, not tonic's 32 KiB. The
//! buffer never shrinks: a burst (a stream starts with the presence of every agent of the
//! tenant, 6 KB at 100 agents) grew it to 8 KiB, kept for the stream's life (34.0 KiB per
//! idle connection instead of 28.2). Sends over `Connect` ran as fast with either threshold.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Starting size of a call's encode and decode buffers.
const BUFFER_SIZE: usize = 1024;
/// Encoded bytes a stream gathers before handing them to HTTP/2; at most the starting size,
/// so that a burst of small messages does not grow the buffer.
const YIELD_THRESHOLD: usize = BUFFER_SIZE;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// A prost codec with [`BUFFER_SIZE`] buffers (`build.rs` names it as the codec path).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
