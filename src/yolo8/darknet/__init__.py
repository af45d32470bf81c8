"""darknet file formats: .cfg text and .weights binaries."""
