//! PNG encoding of generated images, and decoding of the images callers send (img2img).

use crate::generator::{GeneratedImage, InitImage};

/// The largest side of an input image accepted, in pixels: a guard against decompression
/// bombs (a tiny PNG that claims 100k x 100k), well above any size a dialect generates.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// Why an input image was refused. The messages are meant for API callers.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("the image is not a PNG, JPEG or WebP file this server can decode: {0}")]
    Decode(#[source] image::ImageError),
    #[error("the image is {width}x{height}; sides larger than {MAX_INPUT_SIDE} pixels are not accepted")]
    TooLarge { width: u32, height: u32 },
}

/// Decodes a PNG, JPEG or WebP file to 8-bit RGB (alpha is dropped, grey expanded).
pub fn decode_image(bytes: &[u8]) -> Result<InitImage, ImageInputError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Decode(image::ImageError::IoError(e)))?;
    let (width, height) = reader.into_dimensions().map_err(ImageInputError::Decode)?;
    if width > MAX_INPUT_SIDE || height > MAX_INPUT_SIDE {
        return Err(ImageInputError::TooLarge { width, height });
    }
    let decoded = image::load_from_memory(bytes).map_err(ImageInputError::Decode)?.into_rgb8();
    Ok(InitImage { width: decoded.width(), height: decoded.height(), rgb: decoded.into_raw() })
}

#[derive(Debug, thiserror::Error)]
#[error("PNG encoding failed")]
pub struct PngError(#[from] png::EncodingError);

/// Encodes 8-bit RGB pixels as PNG, with the seed recorded in a `tEXt` chunk.
pub fn encode_png(image: &GeneratedImage) -> Result<Vec<u8>, PngError> {
    let mut out = Vec::with_capacity(image.rgb.len() / 2);
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // Fast compression: generated images are noisy and high levels buy little for much CPU.
        encoder.set_compression(png::Compression::Fast);
        encoder.add_text_chunk("Software".to_owned(), "easel".to_owned())?;
        encoder.add_text_chunk("Seed".to_owned(), image.seed.to_string())?;
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_we_encode_decodes_as_an_init_image() {
        let rgb: Vec<u8> = (0..(5 * 2 * 3)).map(|i| (i * 11 % 256) as u8).collect();
        let bytes = encode_png(&GeneratedImage { width: 5, height: 2, seed: 1, rgb: rgb.clone() }).expect("encode");
        let image = decode_image(&bytes).expect("decode");
        assert_eq!((image.width, image.height, image.rgb), (5, 2, rgb));
    }

    #[test]
    fn bytes_that_are_no_image_are_refused_with_a_message() {
        let err = decode_image(b"hello, not an image").expect_err("not an image");
        assert!(err.to_string().contains("PNG, JPEG or WebP"), "{err}");
    }

    #[test]
    fn encoded_png_decodes_to_the_same_pixels() {
        let rgb: Vec<u8> = (0..(4 * 3 * 3)).map(|i| (i * 7 % 256) as u8).collect();
        let image = GeneratedImage { width: 4, height: 3, seed: 9, rgb: rgb.clone() };
        let bytes = encode_png(&image).expect("encode");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!((info.width, info.height), (4, 3));
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
    }
}
