//! The protobuf codec every k3sfleet service and client uses: tonic's prost
//! codec with small starting buffers.
//!
//! tonic gives each stream an 8 KiB encode and an 8 KiB decode buffer up
//! front. An agent's session carries a report of a few KiB every 15 s, and a
//! coordinator holds one session per agent: at 10,000 agents those buffers
//! alone were 160 MiB. The buffers still grow to fit any message (an artifact
//! chunk), so only their starting size changes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A stream's buffers start at this size and grow as its messages need.
const STARTING_BUFFER: usize = 1024;
/// As tonic's default: an encoder yields after buffering this much.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with [`STARTING_BUFFER`]-sized buffers.
#[derive(Debug, Clone, Copy)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        CompactCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(STARTING_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
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
