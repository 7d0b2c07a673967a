// The widget manager (html-manager 1.0.6) typesets widget labels with MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no Hub,
// so every widget page threw "Cannot read properties of undefined (reading 'Queue')". This gives
// whatever object window.MathJax holds (the configuration, then MathJax 3 itself) a Hub whose Queue
// typesets the element with MathJax 3's typesetPromise.
(function () {
  var hub = {
    Queue: function (job) {
      var mj = window.MathJax;
      if (mj && typeof mj.typesetPromise === "function" && job && job[2]) {
        mj.typesetPromise([job[2]]).catch(function () {});
      }
    },
  };
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) {
      Object.defineProperty(mj, "Hub", { value: hub, configurable: true, enumerable: false });
    }
    return mj;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();
