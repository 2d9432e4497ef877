//! The gRPC codec of every Ballast service: prost's, with small buffers.
//!
//! tonic gives every call's encoder and decoder an 8 KiB buffer to start
//! with, and a watch keeps its encoder's for as long as the node is
//! connected: at 10,000 agents that was 80 MiB of a controller's memory
//! for messages of about a kilobyte. These start at [`START_BYTES`] and grow
//! as a message needs (up to the message bound, [`crate::MAX_MESSAGE_BYTES`]).

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where a call's encode and decode buffers start.
pub const START_BYTES: usize = 1024;
/// How much a stream encodes before it lets others run (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(START_BYTES, YIELD_BYTES)
}

/// prost's codec with [`START_BYTES`] buffers; named in `build.rs`.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
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
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    /// The generated clients and servers, every one of them, encode with
    /// this codec: tonic's default would give each watch 8 KiB for good.
    #[test]
    fn every_generated_service_uses_the_lean_codec() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/ballast.v1.rs"));
        assert!(
            !generated.contains("ProstCodec"),
            "a generated service uses tonic-prost's codec directly"
        );
        let uses = generated
            .matches("crate::codec::LeanCodec::default()")
            .count();
        assert!(uses > 10, "only {uses} calls use the lean codec");
    }
}
