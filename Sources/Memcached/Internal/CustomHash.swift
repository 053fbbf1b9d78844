internal import CLibMemcached
internal import CZlib

/// The box a custom hash function lives in.
///
/// libhashkit keeps only a raw pointer to it (its context), copies that pointer into every clone of
/// a handle and never releases it, so every ``Handle`` that carries the pointer holds the box in its
/// `keepAlive`: the box goes with the last such handle.
final class CustomHashFunction: Sendable, Hashable {
    let name: String
    let function: @Sendable (UnsafeRawBufferPointer) -> UInt32

    init(name: String, function: @escaping @Sendable (UnsafeRawBufferPointer) -> UInt32) {
        self.name = name
        self.function = function
    }

    /// Identity, because closures cannot be compared.
    static func == (lhs: CustomHashFunction, rhs: CustomHashFunction) -> Bool {
        lhs === rhs
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(self))
    }

    /// zlib's full CRC-32, python's `binascii.crc32`.
    static func crc32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        // zlib's crc32_z returns the initial value 0 for a nil buffer, so an empty key needs no case.
        UInt32(truncatingIfNeeded: crc32_z(0, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    /// zlib's Adler-32, python's `zlib.adler32`.
    static func adler32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        // Adler-32 starts at 1, not 0: zlib hands that start value back for a nil buffer.
        let start = adler32_z(0, nil, 0)
        return UInt32(
            truncatingIfNeeded: adler32_z(start, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        )
    }

    /// Whether libhashkit can compute a hash.
    static func isAvailable(_ kind: MemcachedHash.Kind) -> Bool {
        switch kind {
        case .builtIn(_, let value):
            libhashkit_has_algorithm(hashkit_hash_algorithm_t(rawValue: value))
        case .custom:
            true
        }
    }

    /// A hash's value for some key bytes, computed the way a handle computes it.
    static func value(_ kind: MemcachedHash.Kind, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        switch kind {
        case .builtIn(_, let value):
            if let base = bytes.baseAddress {
                return memcached_generate_hash_value(
                    base.assumingMemoryBound(to: CChar.self),
                    bytes.count,
                    memcached_hash_t(rawValue: value)
                )
            }
            // libhashkit reads no byte of an empty key, but wants a pointer all the same.
            let empty: CChar = 0
            return withUnsafePointer(to: empty) {
                memcached_generate_hash_value($0, 0, memcached_hash_t(rawValue: value))
            }
        case .custom(let function):
            return function.function(bytes)
        }
    }
}

extension Handle {
    /// Makes `function` the handle's key hash.
    ///
    /// Must follow every `MEMCACHED_BEHAVIOR_HASH`, which would replace it. Once installed,
    /// `function` is held in `keepAlive`, which clones copy, so it lives as long as the handle and
    /// its clones; if installing fails, the previous box, which the hashkit still points at, stays.
    func installCustomHash(_ function: CustomHashFunction) throws(MemcachedError) {
        guard let hashkit = hashkit_create(nil) else {
            throw MemcachedError(code: .memoryAllocationFailure, message: "hashkit_create failed")
        }
        // memcached_set_hashkit copies the struct, function pointer and context included.
        defer { hashkit_free(hashkit) }
        let installed = hashkit_set_custom_function(
            hashkit,
            { key, length, context in
                // A closure literal that captures nothing is a C function; the box comes back
                // through the context pointer instead.
                guard let context else { return 0 }
                let box = Unmanaged<CustomHashFunction>.fromOpaque(context).takeUnretainedValue()
                return box.function(UnsafeRawBufferPointer(start: key, count: length))
            },
            Unmanaged.passUnretained(function).toOpaque()
        )
        guard installed == HASHKIT_SUCCESS else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libhashkit refused the custom hash \(function.name)"
            )
        }
        let rc = memcached_set_hashkit(try live(), hashkit)
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libmemcached refused the custom hash \(function.name): \(lastErrorMessage(for: rc))"
            )
        }
        keepAlive = function
    }
}
