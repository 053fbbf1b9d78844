internal import CZlib

/// zlib compression as python-memcached applies it (`zlib.compress` / `zlib.decompress`, the
/// zlib format with header and checksum), so either side reads what the other compressed.
enum Compression {
    /// Decompressed values larger than this are refused, so a small hostile value cannot make
    /// the client allocate without bound.
    static let maximumDecompressedLength = 256 << 20

    /// Compresses bytes; returns `nil` when the result would not be smaller.
    static func compress(_ input: [UInt8]) -> [UInt8]? {
        var capacity = compressBound(uLong(input.count))
        var output = [UInt8](repeating: 0, count: Int(capacity))
        let status = output.withUnsafeMutableBufferPointer { out in
            input.withUnsafeBufferPointer { source in
                compress2(out.baseAddress, &capacity, source.baseAddress, uLong(source.count), Z_DEFAULT_COMPRESSION)
            }
        }
        guard status == Z_OK, Int(capacity) < input.count else { return nil }
        output.removeSubrange(Int(capacity)...)
        return output
    }

    /// Decompresses zlib-format bytes.
    ///
    /// - Throws: ``MemcachedError`` with code `decompressionFailed` for corrupt input or output
    ///   over ``maximumDecompressedLength``.
    static func decompress(_ input: UnsafeRawBufferPointer) throws -> [UInt8] {
        func failure(_ reason: String) -> MemcachedError {
            MemcachedError(code: .decompressionFailed, message: "cannot decompress the value: \(reason)")
        }
        var stream = z_stream()
        guard czlib_inflate_init(&stream) == Z_OK else { throw failure("inflateInit failed") }
        defer { inflateEnd(&stream) }

        var output = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: max(4_096, input.count * 4))
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        while true {
            let (status, produced) = chunk.withUnsafeMutableBufferPointer { buffer -> (Int32, Int) in
                stream.next_out = buffer.baseAddress
                stream.avail_out = uInt(buffer.count)
                let status = inflate(&stream, Z_NO_FLUSH)
                return (status, buffer.count - Int(stream.avail_out))
            }
            output.append(contentsOf: chunk[..<produced])
            guard output.count <= maximumDecompressedLength else { throw failure("the value is too large") }
            switch status {
            case Z_STREAM_END:
                return output
            case Z_OK:
                continue
            case Z_BUF_ERROR where produced > 0:
                continue
            default:
                throw failure("zlib status \(status)")
            }
        }
    }
}
