// The real app would build with this; the bundled example ships its output pre-built.
module.exports = { output: 'standalone' };
