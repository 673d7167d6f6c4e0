#!/usr/bin/env python3
"""Write 4 deterministic, photo-like (poorly compressible) PNGs into DIR/images/.

usage: gen_images.py PUBLIC_DIR
Plain zlib, no PIL. Gradient + seeded noise, 800x600 RGB (~1.0-1.4 MB each).
"""
import os
import random
import struct
import sys
import zlib


def png(width, height, rows):
    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def image(seed, width=800, height=600, noise=96):
    rng = random.Random(seed)
    rows = []
    base = bytes((x * 255 // width) for x in range(width) for _ in range(3))
    for y in range(height):
        n = rng.randbytes(width * 3)
        shift = (y * 255 // height + seed * 40) & 0xFF
        rows.append(bytes(((b + shift + (v % noise)) & 0xFF) for b, v in zip(base, n)))
    return png(width, height, rows)


def main():
    out = os.path.join(sys.argv[1], "images")
    os.makedirs(out, exist_ok=True)
    for i, noise in zip(range(1, 5), (256, 128, 12, 40)):
        with open(os.path.join(out, f"photo-{i}.png"), "wb") as f:
            f.write(image(i, noise=noise))


if __name__ == "__main__":
    main()
