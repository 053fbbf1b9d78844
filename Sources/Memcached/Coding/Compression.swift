internal import CZlib

/// zlib compression as python-memcached applies it (`zlib.compress` / `zlib.decompress`, the
/// zlib format with header and checksum), so either side reads what the other compressed.
enum Compression {
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

    /// Decompresses zlib-format bytes into at most `limit` bytes.
    ///
    /// zlib's format does not say how long the output is, and a hostile or merely huge value can
    /// inflate a thousandfold. A first pass inflates into a buffer of a guessed size (four times
    /// the input, within `limit`); output that does not fit is not kept but counted, through a
    /// small scratch chunk, and refused as soon as the count passes `limit`. Only then is a
    /// buffer of the exact size allocated and the input inflated again. So memory never exceeds
    /// the output's own size (or `limit`), never twice it as growing an array would.
    ///
    /// - Throws: ``MemcachedError`` with code `decompressionFailed` for corrupt input, bytes after
    ///   the compressed data (python-memcached's `zlib.decompress` drops them), or output over
    ///   `limit`.
    static func decompress(_ input: UnsafeRawBufferPointer, limit: Int) throws -> [UInt8] {
        let guess = min(limit, max(4_096, input.count.multipliedReportingOverflow(by: 4).partialValue))
        var output = [UInt8](repeating: 0, count: max(guess, 0))
        let length = try inflate(input, into: &output, limit: limit)
        if length <= output.count {
            output.removeSubrange(length...)
            return output
        }
        // Released first, so that the guess and the exact buffer never coexist.
        output = []
        output = [UInt8](repeating: 0, count: length)
        _ = try inflate(input, into: &output, limit: limit)
        return output
    }

    /// Inflates `input` into `output` and returns the whole output's length, which may be more
    /// than `output` holds: the rest is inflated into a scratch chunk and only counted.
    private static func inflate(_ input: UnsafeRawBufferPointer, into output: inout [UInt8], limit: Int) throws -> Int {
        func failure(_ reason: String) -> MemcachedError {
            MemcachedError(code: .decompressionFailed, message: "cannot decompress the value: \(reason)")
        }
        var stream = z_stream()
        guard czlib_inflate_init(&stream) == Z_OK else { throw failure("inflateInit failed") }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        guard input.count <= Int(UInt32.max) else { throw failure("the compressed value is over 4 GiB") }
        stream.avail_in = uInt(input.count)
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        var total = 0
        while true {
            let inOutput = total < output.count
            let (status, produced) =
                inOutput
                ? output.withUnsafeMutableBufferPointer {
                    inflateStep(&stream, into: UnsafeMutableBufferPointer(rebasing: $0[total...]))
                }
                : scratch.withUnsafeMutableBufferPointer { inflateStep(&stream, into: $0) }
            total += produced
            guard total <= limit else {
                throw failure("it inflates past maximumReceivedValueLength, \(limit) bytes")
            }
            switch status {
            case Z_STREAM_END:
                // Bytes after the end of the stream are data zlib would drop without a word: what
                // an `append` to a compressed value adds (memcached keeps the item's flags).
                guard stream.avail_in == 0 else {
                    throw failure(
                        "\(stream.avail_in) bytes follow the compressed data (appended to a compressed value?)"
                    )
                }
                return total
            case Z_OK:
                continue
            case Z_BUF_ERROR where produced > 0:
                continue
            default:
                throw failure("zlib status \(status)")
            }
        }
    }

    private static func inflateStep(
        _ stream: inout z_stream,
        into buffer: UnsafeMutableBufferPointer<UInt8>
    ) -> (Int32, Int) {
        stream.next_out = buffer.baseAddress
        // zlib counts in 32 bits; a larger buffer is filled over several steps.
        stream.avail_out = uInt(min(buffer.count, Int(UInt32.max)))
        let before = Int(stream.avail_out)
        let status = CZlib.inflate(&stream, Z_NO_FLUSH)
        return (status, before - Int(stream.avail_out))
    }
}
