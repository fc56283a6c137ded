// marp-cli settings for the deck, used by every export (see README.md).
module.exports = {
  // The charts are local files: PDF export (which renders in Chromium) needs this to load them.
  allowLocalFiles: true,
  options: {
    // A line break in the Markdown source is a space, as in any Markdown; Marp's default
    // turns each one into a forced <br>, which breaks paragraphs mid-phrase on the slide.
    markdown: { breaks: false },
  },
};
