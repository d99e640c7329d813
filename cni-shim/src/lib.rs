//! weft control protocol.
