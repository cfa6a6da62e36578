//! PNG encoding of generated images.

use crate::generator::GeneratedImage;

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
