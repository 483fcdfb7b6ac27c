// The translation unit that builds the tests' precompiled header (tests/CMakeLists.txt): every
// test file reuses it, so GoogleTest's and the standard library's headers are parsed once.
